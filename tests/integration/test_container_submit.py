"""`jobs/submit.py` refuses an image it cannot run before anything is queued or written: exit 2, one
`error:` line. No Slurm cluster needed: the image is checked before the live-job query and the freeze."""
from __future__ import annotations

import subprocess

from jobs.container_image import DEPS_LABEL, deps_sha256
from tests.integration import e2e
from tests.tiny_images import build_tiny_image


def submit_with_image(tmp_path, data, image) -> subprocess.CompletedProcess:
    runs = tmp_path / "runs"
    result = e2e.submit("stage=cpt", "model=tiny-mixtral", "site=local-slurm", "nodes=2", f"runs_root={runs}",
                        "run=img", f"data.path={data}", f"site.container.image={image}", timeout=120)
    assert result.returncode == 2, result.stdout + result.stderr
    errors = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(errors) == 1 and errors[0].startswith("error: site 'local-slurm': container image "), result.stderr
    assert not (runs / "img").exists()  # nothing frozen, nothing in the ledger
    return result


def test_a_missing_image_is_refused_at_submit(tmp_path, packed_data):
    result = submit_with_image(tmp_path, packed_data, tmp_path / "saul-cpu.sif")
    assert "does not exist" in result.stderr and "make image" in result.stderr


# A file that is not an image and an image without provenance take the same path: tests/unit/test_container_image.py


def test_an_image_of_another_revision_is_refused_at_submit(tmp_path, packed_data):
    labels = {"org.saul.flavor": "cpu", DEPS_LABEL: "0" * 64, "org.saul.git_revision": "feedc0ffee00" + "0" * 28}
    image = build_tiny_image(tmp_path / "old.sif", labels)
    result = submit_with_image(tmp_path, packed_data, image)
    assert "built from revision feedc0ffee00" in result.stderr and "make image" in result.stderr
    assert deps_sha256("cpu") not in result.stderr
