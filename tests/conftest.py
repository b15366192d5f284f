"""Fixtures shared by the whole suite: a tiny corpus, tokenizer and shard set, all built from the Python
standard library's docstrings (no network, no ../shared), once per session."""
import ast
import os
import shutil
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import SimpleNamespace

import pytest

import data
from tools.tiny import TINY_RUN  # the tiny runs' settings (tools/tiny.py, shared with tools/gpu_check.py)

ROOT = Path(__file__).resolve().parents[1]
SHARED_TOKENIZER = ROOT.parent / "shared" / "data" / "tokenizers" / "fineweb_1024_bpe.model"
TINY_DOCS, TINY_VAL_DOCS, TINY_VOCAB = 130, 15, 512  # ~300k train tokens, ~30k val tokens


def pytest_configure(config):
    """pytest.ini runs the suite on 2 pytest-xdist workers, one per core: each worker computes on one thread, and so do
    the processes it starts (unless a test sets its own), or their threads would spin against each other's."""
    if os.environ.get("PYTEST_XDIST_WORKER"):
        os.environ["OMP_NUM_THREADS"] = "1"
        import torch
        torch.set_num_threads(1)


def modules_using(fixture: str) -> set[str]:
    """The test modules (as node ids name them) with a test or fixture that takes `fixture` as an argument."""
    found = set()
    for path in sorted(Path(__file__).parent.glob("test_*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        if any(isinstance(n, ast.FunctionDef) and fixture in [a.arg for a in n.args.args] for n in ast.walk(tree)):
            found.add(f"tests/{path.name}")
    return found


CPU_RUNS_FILES = modules_using("cpu_runs")  # one scope for the xdist workers, so the runs are made once


def suite_scope(nodeid: str) -> str:
    """The unit of work a worker takes whole: the test's module, or "cpu_runs" for the modules that share them."""
    path = nodeid.split("::", 1)[0]
    return "cpu_runs" if path in CPU_RUNS_FILES else path


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config, log):
    """pytest.ini's --dist loadfile (a module's tests on one worker, so its fixtures run once) with suite_scope's
    units. (Not loadgroup's marks: on pytest >= 9.2 xdist ignores them, pytest-dev/pytest-xdist#1386.)"""
    if config.getvalue("dist") != "loadfile":
        return None
    from xdist.scheduler import LoadFileScheduling

    class SuiteScheduling(LoadFileScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return suite_scope(nodeid)
    return SuiteScheduling(config, log)


def pytest_collection_modifyitems(config, items):
    gpu_items = [item for item in items if "gpu" in item.keywords]
    if gpu_items:
        import torch
        if not torch.cuda.is_available():
            for item in gpu_items:
                item.add_marker(pytest.mark.skip(reason="needs CUDA"))


@pytest.fixture(scope="session")
def stdlib_docs():
    """The first TINY_DOCS documents of data.stdlib_corpus (list of str)."""
    return data.stdlib_corpus(TINY_DOCS)


@pytest.fixture(scope="session")
def tiny_corpus_dir(tmp_path_factory, stdlib_docs):
    """A directory of doc_NNNN.txt files, one per stdlib_docs document, in order (input for `build --text`)."""
    path = tmp_path_factory.mktemp("tiny_corpus")
    for i, doc in enumerate(stdlib_docs):
        (path / f"doc_{i:04d}.txt").write_bytes(doc.encode("utf-8"))
    return path


@pytest.fixture(scope="session")
def tokenizer_path(tmp_path_factory, stdlib_docs):
    """Path of a SentencePiece BPE model (vocab 512, challenge settings) trained on the train part of stdlib_docs."""
    return data.train_tokenizer(stdlib_docs[TINY_VAL_DOCS:], tmp_path_factory.mktemp("tokenizer") / "tokenizer.model",
                                TINY_VOCAB)


@pytest.fixture(scope="session")
def tiny_shards(tmp_path_factory, stdlib_docs, tokenizer_path):
    """Namespace: data_path (dir with fineweb_val_000000.bin + fineweb_train_000000.bin), tokenizer_path,
    vocab_size, val_docs (the first val_docs of docs are validation), docs, summary (data.build's dict),
    env (DATA_PATH / TOKENIZER_PATH / VOCAB_SIZE for train_gpt.py)."""
    out = tmp_path_factory.mktemp("tiny_shards")
    summary = data.build(stdlib_docs, out, tokenizer=tokenizer_path, val_docs=TINY_VAL_DOCS, log=lambda _: None)
    env = {"DATA_PATH": summary["data_path"], "TOKENIZER_PATH": summary["tokenizer_path"],
           "VOCAB_SIZE": str(summary["vocab_size"])}
    return SimpleNamespace(data_path=summary["data_path"], tokenizer_path=summary["tokenizer_path"],
                           vocab_size=summary["vocab_size"], val_docs=TINY_VAL_DOCS, docs=stdlib_docs,
                           summary=summary, env=env)


@pytest.fixture(scope="session")
def official_tokenizer():
    """Path of the challenge's sp1024 tokenizer from ../shared; skips the test when it is absent."""
    if not SHARED_TOKENIZER.exists():
        pytest.skip(f"{SHARED_TOKENIZER} not present")
    return SHARED_TOKENIZER


# ------------------------------------------------------------------ real runs of train_gpt.py


@pytest.fixture(scope="session")
def tiny_run_env(tiny_shards):
    """Environment for a tiny CPU run of train_gpt.py on tiny_shards (one thread per process)."""
    return {**os.environ, "OMP_NUM_THREADS": "1", **TINY_RUN, **tiny_shards.env}


@pytest.fixture(scope="session")
def cpu_runs(tmp_path_factory, tiny_run_env):
    """Three real `torchrun --nproc_per_node=2` CPU runs of one copy of train_gpt.py (SEED=1, 2, 3) on the tiny shards,
    side by side, each in its own folder: dicts log, script, ptz and pt (the run's final_model.ptz and the trained
    weights it saved before the export), and the launcher's returncode, stdout, stderr and seconds."""
    work = tmp_path_factory.mktemp("cpu_runs")
    script = Path(shutil.copy(ROOT / "train_gpt.py", work / "train_gpt.py"))

    def run(seed):
        cwd, t0 = work / f"seed{seed}", time.perf_counter()
        cwd.mkdir()
        env = {**tiny_run_env, "SEED": str(seed), "RUN_ID": f"cpu_seed{seed}"}
        proc = subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                                 str(script)], cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True, start_new_session=True)
        try:
            stdout, stderr = proc.communicate(timeout=240)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)  # torchrun and the ranks it started
            stdout, stderr = proc.communicate()
        return {"log": cwd / "logs" / f"cpu_seed{seed}.txt", "script": script, "ptz": cwd / "final_model.ptz",
                "pt": cwd / "final_model.pt",
                "returncode": proc.returncode, "stdout": stdout, "stderr": stderr, "seconds": time.perf_counter() - t0}

    with ThreadPoolExecutor(3) as pool:
        runs = list(pool.map(run, (1, 2, 3)))
    for seed, r in zip((1, 2, 3), runs):
        if r["returncode"] != 0:
            pytest.fail(f"train_gpt.py SEED={seed} exited {r['returncode']}:\n{r['stdout'][-2000:]}\n{r['stderr'][-4000:]}")
        print(f"cpu_runs: SEED={seed} took {r['seconds']:.1f}s")
    return runs


def train_tiny(h, data_path, steps: int, autocast=None):
    """A GPT (seed 0) trained `steps` steps of 8 sequences on data_path with main()'s optimizers and retraction,
    under `autocast` if given; returns (model, the training stream left where it stopped, losses)."""
    import contextlib

    import torch

    from train_gpt import GPT, TokenStream, make_optimizers, shard_files
    torch.manual_seed(0)
    model = GPT(h)
    optimizers = make_optimizers(model, h)
    stream = TokenStream(shard_files(f"{data_path}/fineweb_train_*.bin"), h.vocab_size)
    losses = []
    for _ in range(steps):
        x, y = stream.batch(8, h.train_seq_len, 0, 1, "cpu")
        with autocast or contextlib.nullcontext():
            loss = model(x, y)
        loss.backward()
        for opt in optimizers:
            opt.step()
            opt.zero_grad(set_to_none=True)
        model.renorm_()
        losses.append(loss.item())
    return model, stream, losses
