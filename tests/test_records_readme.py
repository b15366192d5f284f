"""records/README.md cannot drift from tools/record.py and tools/check.py: the tracks, the rules, the files and the
submission.json fields it lists are the ones the tools use."""
import re

from _logs import REPO, SEPARATOR
from tools import record
from tools.check import check_log

README = (REPO / "records" / "README.md").read_text(encoding="utf-8")


def tables(heading: str) -> list[list[list[str]]]:
    """The tables under `## heading`, each a list of rows of cells (header row and separator row dropped)."""
    section = README.split(f"## {heading}\n", 1)[1].split("\n## ", 1)[0]
    found, current = [], None
    for line in section.splitlines() + [""]:
        if line.startswith("| "):
            current = (current or []) + [[cell.strip() for cell in line.strip().strip("|").split(" | ")]]
        elif current:
            found.append(current[2:])
            current = None
    return found


def first_column(heading: str, index: int = 0) -> list[str]:
    return [row[0] for row in tables(heading)[index]]


def test_tracks():
    for track in record.TRACKS:
        assert f"records/track_{track}/" in README
        assert f"--track {track}" in README
    assert len(record.TRACKS) == 2 and "exactly these two tracks" in README


def test_rules_are_check_logs_rows(tmp_path):
    log = tmp_path / "log.txt"
    log.write_text("print('x')\n\n" + SEPARATOR + "\nrun_id:x\n")
    script, ptz = tmp_path / "train_gpt.py", tmp_path / "final_model.ptz"
    script.write_text("print('x')\n")
    ptz.write_bytes(b"0")
    rules = [row.rule for row in check_log(log, script, ptz)]
    assert first_column("What record.py checks first") == rules


def test_submission_fields_are_record_pys():
    rows = {row[0]: row[1] for row in tables("What goes in a folder")[1]}
    assert [name for cell in rows for name in re.findall(r"`(\w+)`", cell)] == list(record.FIELDS)
    fake = {"final_exact": {"val_loss": 1.0, "val_bpb": 1.0}, "submission_bytes": {"total": 1}, "steps": 1,
            "step_avg_ms": 1.0, "train_loop_ms": 1.0, "eval_time_ms": 1.0}
    assert set(re.findall(r"`(\w+)`", rows["`seed_results`"])) == set(record.seed_result(fake))


def test_folder_files():
    files = first_column("What goes in a folder")
    assert files == ["`<log name>` (e.g. `seed1.txt`)", "`train_gpt.py`", "`requirements.txt`", "any `--extra` file",
                     "`submission.json`", "`README.md`"]
    source = (REPO / "tools" / "record.py").read_text(encoding="utf-8")
    for name in ("train_gpt.py", "requirements.txt", "submission.json", "README.md"):
        assert f'tmp / "{name}"' in source
