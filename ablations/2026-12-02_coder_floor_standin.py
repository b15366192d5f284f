"""Build the default-shape stand-in (tools/requant.py standin) and keep its artifact: requant.py writes it to a
temporary folder, so T.write_artifact is wrapped to copy the file out before the folder goes.
    python ablations/2026-12-02_coder_floor_standin.py OUT.ptz --log LOG --model final_model.pt [--seed 0]"""
import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))
import requant  # noqa: E402

out = Path(sys.argv[1])
write = requant.T.write_artifact


def write_and_keep(model, path, *args, **kw):
    size = write(model, path, *args, **kw)
    shutil.copyfile(path, out)
    return size


requant.T.write_artifact = write_and_keep
sys.exit(requant.main(["standin"] + sys.argv[2:]))
