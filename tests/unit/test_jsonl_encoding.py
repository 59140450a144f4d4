"""JSONL files are UTF-8 whatever the locale, and a record is one line only at "\\n"."""
import json
import os
import subprocess
import sys
from pathlib import Path

from saul.resilience import ledger

REPO = Path(__file__).resolve().parents[2]


def test_a_line_separator_inside_a_value_does_not_split_the_record(tmp_path):
    # Our own audit and shard files are written with ensure_ascii=False: U+2028 and U+0085 stay raw.
    path = tmp_path / "removed.jsonl"
    rows = [{"doc_id": "a\u2028b", "detail": "x\x85y"}, {"doc_id": "c", "detail": "é"}]
    path.write_bytes("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows).encode("utf-8"))
    assert ledger.read(path) == rows


def test_jsonl_is_read_and_written_as_utf8_in_an_ascii_locale(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_bytes((json.dumps({"source": "arrêts"}, ensure_ascii=False) + "\n").encode("utf-8"))
    env = dict(os.environ, LC_ALL="C", LANG="C", PYTHONUTF8="0", PYTHONCOERCECLOCALE="0",
               PYTHONPATH=str(REPO))
    code = ("import sys; from pathlib import Path; from saul.resilience.ledger import read; "
            "from saul.train.metrics import MetricsWriter; import locale; "
            "assert locale.getpreferredencoding(False).lower() not in ('utf-8', 'utf8'); "
            "p = Path(sys.argv[1]); w = MetricsWriter(p, True); w.write({'note': '\\u00a7 \\u201cx\\u201d'}); "
            "w.sync(); print(ascii([r.get('source') or r.get('note') for r in read(p)]))")
    proc = subprocess.run([sys.executable, "-c", code, str(path)], env=env, capture_output=True, text=True,
                          encoding="utf-8", timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == ascii(["arrêts", "§ “x”"])

