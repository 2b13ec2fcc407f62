"""Faults: `finetune` and `adapt` SIGKILLed at chosen points (during a step, while a checkpoint or a
history line is written) and resumed end exactly as an uninterrupted run, with no file left truncated;
one run per --out at a time; damaged checkpoints fall back to the previous one; disk full, read-only
folders, diverging losses and another run's settings are one line each.

Every CLI run here is a real process of its own, killed for real. To keep the file fast on two cores,
processes are forked from a "zygote" (this file run as a script) that has imported torch, timm and the
toolkit once and has not touched torch yet: each child then behaves as `python -m sparsevit_cli.cli ARGS`
without paying 5-10 s of imports. The kill points are set in the child by wrapping os.replace / os.fsync
/ Trainer.train_step, so they are exact (the N-th write of a given file), not timed.
"""
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from cli_helpers import stopped_after

REPO = Path(__file__).resolve().parents[1]
MICRO_ARGS = {"img_size": 64, "embed_dim": 16, "depths": [2, 2], "num_heads": [1, 2], "window_size": 4,
              "drop_path_rate": 0.1}


# --------------------------------------------------------------------------------------------- the zygote
def _install_fault(fault):
    """In the child: SIGKILL this process at the point `fault` names.
    ("step", n): after the n-th training step changed the weights in memory, before anything is saved;
    ("torn", name, n): while the n-th temp file of `name` is written (half of it on disk, not renamed);
    ("before", name, n) / ("after", name, n): just before / after the n-th rename onto `name`;
    ("pause", flag): before the first step, wait until the file `flag` exists (to hold the lock);
    ("into", folder, n): just before the n-th rename of a file into a folder named `folder` (a pipeline
    stage's folder: wherever that stage is when it writes its n-th file)."""
    kind, *rest = fault
    die = lambda: os.kill(os.getpid(), signal.SIGKILL)  # noqa: E731
    count = [0]

    def nth(n):
        count[0] += 1
        return count[0] == n

    if kind in ("step", "pause"):
        from sparsevit_cli.train.trainer import Trainer
        original = Trainer.train_step

        def train_step(self, x, y):
            if kind == "pause":
                while not Path(rest[0]).exists():
                    time.sleep(0.05)
            loss = original(self, x, y)
            if kind == "step" and nth(rest[0]):
                die()
            return loss
        Trainer.train_step = train_step
    elif kind == "torn":
        name, n = rest
        real_fsync = os.fsync

        def fsync(fd):
            target = os.readlink(f"/proc/self/fd/{fd}") if os.path.exists(f"/proc/self/fd/{fd}") else ""
            if Path(target).name.startswith(f".{name}.") and nth(n):
                os.ftruncate(fd, os.fstat(fd).st_size // 2)
                die()
            return real_fsync(fd)
        os.fsync = fsync
    else:
        name, n = rest
        real_replace = os.replace

        def replace(src, dst):
            hit = (Path(dst).parent.name if kind == "into" else Path(dst).name) == name and nth(n)
            if hit and kind in ("before", "into"):
                die()
            real_replace(src, dst)
            if hit:
                die()
        os.replace = replace


def _zygote() -> None:
    """Read one JSON request a line: {"op": "start", "args", "fault", "log"} forks a CLI child and answers
    its pid; {"op": "wait", "pid"} answers its exit code (negative: killed by that signal)."""
    import sparsevit_cli.cli as cli
    import sparsevit_cli.commands.train  # noqa: F401  (the heavy imports, once)
    import sparsevit_cli.swin.method  # noqa: F401
    import timm  # noqa: F401

    for line in sys.stdin:
        req = json.loads(line)
        if req["op"] == "start":
            pid = os.fork()
            if pid == 0:
                log = os.open(req["log"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
                os.dup2(os.open(os.devnull, os.O_RDONLY), 0)
                os.dup2(log, 1)
                os.dup2(log, 2)
                code = 1
                try:
                    if req["fault"]:
                        _install_fault(req["fault"])
                    cli.main(req["args"])
                    code = 0
                except SystemExit as e:
                    code = e.code if isinstance(e.code, int) else 1
                finally:
                    sys.stdout.flush()
                    sys.stderr.flush()
                    os._exit(code)
            answer = {"pid": pid}
        else:
            _, status = os.waitpid(req["pid"], 0)
            answer = {"code": os.waitstatus_to_exitcode(status)}
        print(json.dumps(answer), flush=True)


class Zygote:
    def __init__(self, workdir: Path):
        env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO), PYTHONUNBUFFERED="1")
        self.proc = subprocess.Popen([sys.executable, __file__, "--zygote"], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True, env=env, cwd=workdir)
        self.logs, self.n = workdir, 0

    def _ask(self, req):
        self.proc.stdin.write(json.dumps(req) + "\n")
        self.proc.stdin.flush()
        return json.loads(self.proc.stdout.readline())

    def start(self, args, fault=None):
        self.n += 1
        log = self.logs / f"run{self.n}.log"
        return self._ask({"op": "start", "args": [str(a) for a in args], "fault": fault, "log": str(log)})["pid"], log

    def wait(self, pid) -> int:
        return self._ask({"op": "wait", "pid": pid})["code"]

    def run(self, args, fault=None):
        """(exit code, output) of one CLI run in a fresh process."""
        pid, log = self.start(args, fault)
        code = self.wait(pid)
        return code, log.read_text()

    def close(self):
        self.proc.stdin.close()
        self.proc.wait(timeout=30)


@pytest.fixture(scope="module")
def zygote(tmp_path_factory):
    z = Zygote(tmp_path_factory.mktemp("zygote"))
    yield z
    z.close()


# --------------------------------------------------------------------------------------------- runs
@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    from sparsevit_cli.data.demo import write_demo_data
    d = tmp_path_factory.mktemp("demo") / "data"
    write_demo_data(d, img_size=64, n_train=16, n_val=8, seed=0)
    return d


def write_cfg(folder: Path, data_dir: Path, out: Path, **over) -> Path:
    cfg = {"model": {"name": "swin_tiny_patch4_window7_224", "args": MICRO_ARGS},
           "data": {"path": str(data_dir), "task": "classification"}, "sparsity": [[0.0], [0.5]],
           "optim": {"name": "adamw", "lr": 1e-3}, "schedule": {"name": "cosine", "warmup_steps": 1},
           "epochs": 3, "batch_size": 8, "eval_batch_size": 8, "seed": 5, "out": str(out),
           "checkpoint_every": 1, "adapt": {"report": [0.5]}}
    for key, value in over.items():
        node = cfg
        *parents, leaf = key.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{out.name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def cli_args(command, cfg, resume=False):
    args = [command, str(cfg)] if command == "finetune" else [command, "--config", str(cfg)]
    return args + ["--no-progress"] + (["--resume"] if resume else [])


def weights(out: Path):
    from safetensors.torch import load_file
    return load_file(str(out / "model.safetensors"))


def assert_same_run(out: Path, ref: Path):
    a, b = weights(out), weights(ref)
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert (out / "metrics.jsonl").read_text() == (ref / "metrics.jsonl").read_text()  # no line lost or doubled


def assert_nothing_truncated(out: Path):
    """Every file of the run reads whole; no temp file is left behind."""
    from sparsevit_cli.train.state import read_checkpoint
    assert [p.name for p in out.iterdir() if ".tmp" in p.name] == []
    for name in ("last.pt", "prev.pt"):
        if (out / name).exists():
            read_checkpoint(out / name)
    weights(out)
    for line in (out / "metrics.jsonl").read_text().splitlines():
        json.loads(line)
    for name in ("replicas.json", "adapt_report.json"):
        if (out / name).exists():
            json.loads((out / name).read_text())


# 2 steps per epoch, 3 epochs, a checkpoint after every step: 6 steps, 9 checkpoint writes (6 + 3 at
# epoch ends), 3 history writes. Each fault kills the run (the previous one resumed) at its point.
FINETUNE_FAULTS = [
    ("step", 1),                       # first step done in memory, nothing on disk yet
    ("torn", "last.pt", 2),            # half a checkpoint written in its temp file
    ("after", "prev.pt", 2),           # last.pt renamed to prev.pt, the new one not yet in place
    ("after", "metrics.jsonl", 1),     # history line written, the checkpoint after it not
    ("torn", "metrics.jsonl", 1),      # half a history file written
    ("before", "last.pt", 2),          # a whole checkpoint written, not renamed
    ("step", 1),                       # during a step of the last epoch
]
ADAPT_FAULTS = [("step", 2), ("after", "metrics.jsonl", 1), ("torn", "last.pt", 3)]
# a kill just before the model file's rename (model_file.save_model writes through io.atomic_write_bytes)
MODEL_FILE_FAULTS = [("before", "model.safetensors", 1)]


@pytest.mark.parametrize("command,faults", [
    ("finetune", FINETUNE_FAULTS), ("adapt", ADAPT_FAULTS), ("finetune", MODEL_FILE_FAULTS)])
def test_killed_and_resumed_run_equals_an_uninterrupted_one(zygote, data_dir, tmp_path, command, faults):
    ref, out = tmp_path / "ref", tmp_path / "killed"
    code, log = zygote.run(cli_args(command, write_cfg(tmp_path, data_dir, ref)))
    assert code == 0, log
    cfg = write_cfg(tmp_path, data_dir, out)
    for i, fault in enumerate(faults):
        code, log = zygote.run(cli_args(command, cfg, resume=i > 0), fault=fault)
        assert code == -signal.SIGKILL, f"fault {fault} was not reached: exit {code}\n{log}"
    code, log = zygote.run(cli_args(command, cfg, resume=True))
    assert code == 0, log
    assert_same_run(out, ref)
    assert_nothing_truncated(out)


def test_a_second_run_at_the_same_out_is_refused_with_one_line(zygote, data_dir, tmp_path):
    cfg, flag = write_cfg(tmp_path, data_dir, tmp_path / "out", epochs=1), tmp_path / "go"
    first, _ = zygote.start(cli_args("finetune", cfg), fault=("pause", str(flag)))
    try:
        lock = tmp_path / "out" / ".lock"  # written by the first run once its Trainer is built
        deadline = time.monotonic() + 120
        while not (lock.exists() and lock.read_text().strip()) and time.monotonic() < deadline:
            time.sleep(0.05)
        code, log = zygote.run(cli_args("finetune", cfg, resume=True))
        lines = [line for line in log.splitlines() if line.strip()]
        assert code == 2 and len(lines) == 1 and f"in use by another run (pid {first})" in lines[0], log
    finally:
        flag.touch()
    assert zygote.wait(first) == 0
    assert len((tmp_path / "out" / "metrics.jsonl").read_text().splitlines()) == 1  # one run's history


# --------------------------------------------------------------------------------------------- in process
def _run(args, capsys):
    sys.path.insert(0, str(Path(__file__).parent))
    from cli_helpers import run_cli
    return run_cli(args, capsys)


def one_line(code, err, needle):
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1 and "Traceback" not in err, err
    assert needle in lines[0], err


@pytest.fixture(scope="module")
def stopped_run(tmp_path_factory, data_dir):
    """An out folder of a finetune stopped after 3 of 6 steps (last.pt at step 3, prev.pt at step 2), and
    the weights of the uninterrupted run."""
    from sparsevit_cli.commands.train import run_finetune
    from sparsevit_cli.train.run_config import load_run_config
    base = tmp_path_factory.mktemp("stopped")
    run_finetune(load_run_config(write_cfg(base, data_dir, base / "ref")), progress=False)
    stopped = base / "stopped"
    with stopped_after(3):
        status = run_finetune(load_run_config(write_cfg(base, data_dir, stopped)), progress=False)
    assert status["interrupted"] and status["global_step"] == 3
    return base, stopped


@pytest.fixture
def run_copy(stopped_run, tmp_path, data_dir):
    base, stopped = stopped_run
    out = tmp_path / "out"
    shutil.copytree(stopped, out)
    return write_cfg(tmp_path, data_dir, out), out, base / "ref"


def _garbage(path):
    path.write_bytes(os.urandom(3000))


def _truncate(path):
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _directory(path):
    path.unlink()
    path.mkdir()


def _pickle_payload(path):
    class Payload:  # unpickling runs os.system: weights_only must refuse it
        def __reduce__(self):
            return (os.system, ("touch pwned",))
    torch.save({"model": Payload()}, path)


@pytest.mark.parametrize("damage", [_garbage, _truncate, _directory, _pickle_payload, Path.unlink])
def test_a_damaged_last_checkpoint_falls_back_to_the_previous_one(run_copy, capsys, damage, tmp_path, monkeypatch):
    cfg, out, ref = run_copy
    damage(out / "last.pt")
    monkeypatch.chdir(tmp_path)
    code, stdout, err = _run(cli_args("finetune", cfg, resume=True), capsys)
    assert code == 0, err
    notes = [line for line in stdout.splitlines() if "resuming from" in line]
    assert len(notes) == 1 and "prev.pt (step 2)" in notes[0], stdout
    assert not (tmp_path / "pwned").exists()
    assert_same_run(out, ref)


def test_no_usable_checkpoint_is_one_line(run_copy, capsys):
    cfg, out, _ = run_copy
    _garbage(out / "last.pt")
    _truncate(out / "prev.pt")
    code, _, err = _run(cli_args("finetune", cfg, resume=True), capsys)
    one_line(code, err, "no usable checkpoint in")


@pytest.mark.parametrize("over,needle", [
    ({"optim.lr": 0.01}, "optim.lr is 0.01 in this run but 0.001 in the run saved in"),
    ({"epochs": 4}, "epochs is 4 in this run but 3"),
    ({"model.name": "swin_small_patch4_window7_224"},
     "holds a run of model swin_tiny_patch4_window7_224, this run trains swin_small_patch4_window7_224"),
])
def test_resume_with_other_settings_is_refused(run_copy, data_dir, capsys, over, needle):
    _, out, _ = run_copy
    cfg = write_cfg(out.parent, data_dir, out, **over)
    code, _, err = _run(cli_args("finetune", cfg, resume=True), capsys)
    one_line(code, err, needle)


def test_a_fresh_run_over_a_run_or_another_mode_is_refused(run_copy, capsys):
    cfg, out, _ = run_copy
    code, _, err = _run(cli_args("finetune", cfg), capsys)
    one_line(code, err, "already holds a run (last.pt); pass --resume to continue it, or choose another --out")
    code, _, err = _run(cli_args("adapt", cfg, resume=True), capsys)
    one_line(code, err, "holds a finetune run, not an adapt run")


def test_disk_full_during_a_checkpoint_keeps_the_previous_one(run_copy, capsys, monkeypatch):
    import errno
    from sparsevit_cli.train.state import read_checkpoint
    cfg, out, ref = run_copy
    real_save, calls = torch.save, [0]

    def full_disk(obj, f, *a, **k):
        calls[0] += 1
        if calls[0] == 2:  # the second checkpoint of the resumed run: step 5
            f.write(b"partial")
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(obj, f, *a, **k)

    monkeypatch.setattr(torch, "save", full_disk)
    code, _, err = _run(cli_args("finetune", cfg, resume=True), capsys)
    one_line(code, err, "No space left on device; the previous checkpoint is kept")
    assert read_checkpoint(out / "last.pt")["train_state"]["global_step"] == 4
    assert [p for p in out.iterdir() if ".tmp" in p.name] == []
    monkeypatch.setattr(torch, "save", real_save)
    code, _, err = _run(cli_args("finetune", cfg, resume=True), capsys)
    assert code == 0, err
    assert_same_run(out, ref)


def test_read_only_out_is_one_line(data_dir, tmp_path, capsys):
    out = tmp_path / "ro"
    out.mkdir()
    mounted = False
    if os.geteuid() == 0:  # root writes through permission bits: a read-only mount then
        mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(out)],
                                 capture_output=True).returncode == 0
        if not mounted:
            pytest.skip("running as root and cannot mount a read-only tmpfs")
    else:
        out.chmod(0o555)
    try:
        code, _, err = _run(cli_args("finetune", write_cfg(tmp_path, data_dir, out / "run")), capsys)
        one_line(code, err, "cannot write to --out folder")
    finally:
        if mounted:
            subprocess.run(["umount", str(out)], check=True)
        out.chmod(0o755)


@pytest.mark.parametrize("lr", [1e30])
def test_a_diverging_run_stops_with_one_line_and_writes_no_nan(data_dir, tmp_path, capsys, lr):
    from sparsevit_cli.train.state import read_checkpoint
    out = tmp_path / "out"
    code, _, err = _run(cli_args("finetune", write_cfg(tmp_path, data_dir, out, **{"optim.lr": lr})), capsys)
    one_line(code, err, "training diverged")
    assert "step" in err
    assert not (out / "model.safetensors").exists()
    for name in ("last.pt", "prev.pt"):
        if (out / name).exists():
            assert all(torch.isfinite(v).all() for v in read_checkpoint(out / name)["model"].values())


def test_nan_weights_never_replace_a_good_model_file(data_dir, tmp_path):
    from sparsevit_cli.errors import UserError
    from sparsevit_cli.train.run_config import load_run_config
    from sparsevit_cli.train.trainer import Trainer
    trainer = Trainer(load_run_config(write_cfg(tmp_path, data_dir, tmp_path / "out")), progress=False)
    trainer.history, trainer.last_loss = [], 0.0
    good = trainer.save_model().read_bytes()
    with torch.no_grad():
        next(trainer.model.parameters()).fill_(float("nan"))
    with pytest.raises(UserError, match="not finite"):
        trainer.save_model()
    with pytest.raises(UserError, match="not finite"):
        trainer.save_state()
    assert (tmp_path / "out" / "model.safetensors").read_bytes() == good
    assert not (tmp_path / "out" / "last.pt").exists()


if __name__ == "__main__" and sys.argv[1:] == ["--zygote"]:
    _zygote()
