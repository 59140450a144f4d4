"""The rendezvous port the batch script picks on the first node: outside the ephemeral range, free (a port held
by a real socket is skipped), and different for each restart of the job; the fallback outside Slurm too."""
import socket

import pytest

from saul.resilience import rendezvous_port as rp
from saul.train.distributed import port_from_job_id


def test_the_port_is_outside_the_ephemeral_range_read_from_the_kernel_file(tmp_path):
    ranges = tmp_path / "ip_local_port_range"
    ranges.write_text("32768\t60999\n")
    assert rp.ephemeral_range(str(ranges)) == (32768, 60999)
    assert rp.candidate_window((32768, 60999)) == (10000, 32767)
    assert rp.candidate_window((1024, 50000)) == (50001, 65535)  # a site that moved the range low
    for job in ("37001", "1", "123456789"):
        for restart in range(5):
            port = rp.pick_port(job, restart, ephemeral=(32768, 60999))
            assert 10000 <= port <= 32767
    with pytest.raises(ValueError, match="leaves no room"):
        rp.candidate_window((1024, 65535))
    assert rp.ephemeral_range(str(tmp_path / "missing")) == rp.DEFAULT_EPHEMERAL


def test_a_port_held_by_a_real_socket_is_skipped():
    window = rp.candidate_window((32768, 60999))
    first = next(iter(rp.candidates("4242", 0, window)))
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as held:
        try:
            held.bind(("", first))
        except OSError:
            pytest.skip(f"port {first} is already taken on this machine by someone else")
        held.listen()
        assert not rp.is_free(first)
        picked = rp.pick_port("4242", 0, ephemeral=(32768, 60999))
        assert picked != first and rp.is_free(picked)
    assert rp.pick_port("4242", 0, ephemeral=(32768, 60999)) == first  # free again: first choice again


def test_each_restart_of_a_job_starts_its_search_elsewhere():
    window = rp.candidate_window((32768, 60999))
    starts = [next(iter(rp.candidates("123456", restart, window))) for restart in range(20)]
    assert len(set(starts)) == 20
    ports = list(rp.candidates("123456", 3, window))
    assert sorted(ports) == list(range(window[0], window[1] + 1))  # every port once


def test_the_command_line_prints_one_port(capsys):
    assert rp.main(["--job", "99", "--restart", "2"]) == 0
    assert 10000 <= int(capsys.readouterr().out) < 32768


def test_the_fallback_outside_slurm_stays_below_the_ephemeral_range():
    ports = {port_from_job_id(str(job)) for job in range(0, 200000, 7)}
    assert min(ports) >= 20000 and max(ports) < 32768
    assert port_from_job_id("37001") != port_from_job_id("37002")
