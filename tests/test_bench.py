"""``python -m qmpcore bench`` and the benchmark building blocks.

Only correctness is checked here (every contender does the same work, the
report carries every figure and ratio); no test depends on a timing.
"""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys

import orjson
import pytest

from conftest import IN_CI, REPO
from qmpcore.bench import _framing as framing
from qmpcore.bench import _workloads as workloads
from qmpcore.bench._report import Row, render, to_json
from qmpcore.bench._timing import Budget, percentile, time_runs

ENV = dict(os.environ)  # subprocesses run the qmpcore this test runs on


def bench(*args, timeout=240):
    return subprocess.run(
        [sys.executable, "-m", "qmpcore", "bench", *map(str, args)],
        capture_output=True,
        text=True,
        env=ENV,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )


# -- workloads ------------------------------------------------------------------------


def small_workloads():
    return [
        workloads.small_reply(20),
        workloads.event(20),
        workloads.event_stream(50),
        workloads.schema(),
        workloads.big_frame(100_000, 1),
        workloads.big_frame(100_000, 4096),
    ]


@pytest.mark.parametrize("workload", small_workloads(), ids=lambda w: w.name)
def test_workload_chunks_are_the_frames(workload):
    assert b"".join(workload.chunks) == b"".join(workload.frames)
    assert workload.nbytes == sum(map(len, workload.frames))
    for frame in workload.frames:
        assert orjson.loads(frame) == json.loads(frame)


def test_corpus_found_beside_the_working_directory(corpus_dir, tmp_path, monkeypatch):
    # An installed package lives far from the checkout: the corpus is found
    # from where the command runs, and the working directory comes first.
    (tmp_path / "shared").mkdir()
    (tmp_path / "shared" / "corpus").symlink_to(corpus_dir)
    (tmp_path / "checkout" / "sub").mkdir(parents=True)
    monkeypatch.delenv("QMPCORE_CORPUS", raising=False)
    monkeypatch.chdir(tmp_path / "checkout" / "sub")
    assert workloads.corpus_root() == tmp_path / "shared" / "corpus"
    monkeypatch.setenv("QMPCORE_CORPUS", str(tmp_path / "nowhere"))
    assert workloads.corpus_root() == tmp_path / "shared" / "corpus"


def test_corpus_workloads(corpus_dir):
    assert workloads.corpus_root() == corpus_dir
    schema = workloads.schema()
    assert schema.nbytes == 207_016 and not schema.synthetic
    old = workloads.libvirt(workloads.LIBVIRT_FILES[0])
    new = workloads.libvirt(workloads.LIBVIRT_FILES[1])
    compact = workloads.libvirt(workloads.LIBVIRT_FILES[1], compact=True)
    assert (old.nframes, new.nframes, compact.nframes) == (51, 110, 110)
    assert not new.line_framed and compact.line_framed
    assert [json.loads(f) for f in new.frames] == [json.loads(f) for f in compact.frames]


def test_synthetic_schema_without_corpus(monkeypatch, tmp_path):
    monkeypatch.setenv("QMPCORE_CORPUS", str(tmp_path))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(workloads.pathlib.Path, "parents", property(lambda self: []))
    assert workloads.corpus_root() is None
    schema = workloads.schema()
    assert schema.synthetic and 200_000 < schema.nbytes < 215_000
    assert workloads.libvirt(workloads.LIBVIRT_FILES[0]) is None


def test_workload_selection_builds_only_what_is_asked():
    chosen = workloads.framing_workloads(quick=True, names=["small", "big-1B"])
    assert [w.name for w in chosen] == ["small-reply", "big-1B"]
    assert chosen[1].nbytes >= 1 << 20 and len(chosen[1].chunks) == chosen[1].nbytes
    names = [w.name for w in workloads.framing_workloads(quick=True, names=["small", "event", "schema"])]
    assert len(names) == len(set(names))


# -- contenders ------------------------------------------------------------------------


@pytest.mark.parametrize("workload", small_workloads(), ids=lambda w: w.name)
def test_every_contender_does_the_same_work(workload):
    factories = {name: f for name, f in framing.BASELINES.items()}
    for impl, cls in framing.framer_classes().items():
        factories[impl] = lambda w, cls=cls: framing.framer(w, cls)
        factories[f"{impl} raw"] = lambda w, cls=cls: framing.framer(w, cls, raw=True)
    runs = framing.contender_runs(workload, factories)
    try:
        importlib.import_module("qemu.qmp")
    except ImportError:
        assert runs.pop("qemu.qmp").startswith("qemu.qmp is not installed")
    assert all(callable(run) for run in runs.values()), runs


def test_contenders_that_cannot_frame_say_why():
    pretty = workloads.Workload(
        "pretty", "pretty", chunks=[b'{\n "a": 1\n}\n'], frames=[b'{\n "a": 1\n}\n'], line_framed=False
    )
    runs = framing.contender_runs(pretty, {"lines": framing.lines_json, "orjson": framing.orjson_floor})
    assert runs["lines"] == "line splitting cannot frame multi-line messages"
    assert callable(runs["orjson"])
    with pytest.raises(framing.NotApplicable, match="10 MiB"):
        framing.qemu_qmp_recv(workloads.Workload("big", "big", chunks=[], frames=[b" " * (11 << 20)]))
    broken = workloads.Workload("bad", "bad", chunks=[b"{]\n"], frames=[b"{]\n"])
    assert framing.contender_runs(broken, {"json": framing.json_presplit})["json"].startswith("fails:")
    for cls in framing.framer_classes().values():
        with pytest.raises(framing.NotApplicable, match="framer error"):
            framing.framer(broken, cls)


def test_framer_contender_counts_frames_split_anywhere():
    workload = workloads.event_stream(30)
    for cls in framing.framer_classes().values():
        assert framing.prepare(framing.framer, workload, cls)() == 30


# -- timing and report -----------------------------------------------------------------


def test_time_runs_reports_every_contender():
    calls = {"a": 0, "b": 0}

    def make(name):
        def run():
            calls[name] += 1

        return run

    timings = time_runs({"a": make("a"), "b": make("b")}, Budget(0.001, 3))
    assert set(timings) == {"a", "b"}
    for name, timing in timings.items():
        assert 0 <= timing.best <= timing.median
        assert timing.runs >= 3 and calls[name] >= timing.runs


def test_percentile():
    values = [float(i) for i in range(1, 101)]
    assert percentile(values, 0.5) == 50 and percentile(values, 0.99) == 99 and percentile(values, 1) == 100
    assert percentile([3.0], 0.99) == 3.0
    assert percentile([], 0.5) != percentile([], 0.5)  # nan


def test_report_table_and_json():
    rows = [
        Row(
            "framing",
            "small reply",
            "µs/msg",
            True,
            0.5,
            {"orjson": 0.4, "qemu.qmp": "not installed"},
            variant="cython",
        ),
        Row(
            "framing",
            "small reply",
            "µs/msg",
            True,
            2.0,
            {"orjson": 0.4, "qemu.qmp": "not installed"},
            variant="python",
        ),
        Row("fleet", "1000 VMs: commands/s", "cmd/s", False, 20000.0, {"qemu.qmp": 4000.0}, note="hello"),
    ]
    info = {"qmpcore": "0", "implementation": "cython", "python": "3", "cpu": "cpu", "cores": 2, "os": "os"}
    text = render(rows, info)
    assert "1.25×" in text and "5.00×" in text and "n/a [1]" in text and "[1] not installed" in text
    assert "hello" in text
    data = to_json(rows, info)
    assert data["rows"][0]["baselines"]["orjson"] == {"value": 0.4, "ratio": pytest.approx(1.25)}
    assert data["rows"][0]["baselines"]["qemu.qmp"] == {"value": "not installed", "ratio": None}
    assert data["rows"][2]["better"] == "higher"
    json.dumps(data)


# -- the command -------------------------------------------------------------------------


def test_bench_socket_section_end_to_end(tmp_path):
    out = tmp_path / "bench.json"
    done = bench("--quick", "--only", "socket", "--json", out)
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""  # progress only on a terminal
    assert "round trip (simulated VM)" in done.stdout and "event flood" in done.stdout
    data = json.loads(out.read_text())
    cases = {(r["case"], r["variant"]) for r in data["rows"]}
    assert ("100 pipelined (simulated VM)", "asyncio") in cases
    for row in data["rows"]:
        assert row["section"] == "socket" and row["qmpcore"] > 0
        raw = row["baselines"]["raw socket"]
        assert raw["value"] > 0 and raw["ratio"] == pytest.approx(row["qmpcore"] / raw["value"])


def test_bench_fleet_section_end_to_end(tmp_path):
    done = bench("--quick", "--only", "fleet", "--vms", 20, "--rounds", 2, "--json", "-")
    assert done.returncode == 0, done.stderr
    data = json.loads(done.stdout)
    by_case = {row["case"]: row for row in data["rows"]}
    rate = by_case["20 VMs × 2 rounds: commands/s"]
    assert rate["better"] == "higher" and rate["qmpcore"] > 0
    hung = by_case["1 of 20 hung (timeout 0.5 s): p99 latency"]
    assert "qmpcore 2" in by_case["1 of 20 hung (timeout 0.5 s): p50 latency"]["note"]
    assert hung["qmpcore"] < 500  # healthy VMs never wait for the hung one's timeout


def test_bench_framing_section_runs(tmp_path, monkeypatch):
    from qmpcore import bench as bench_module

    monkeypatch.setattr(
        bench_module, "framing_workloads", lambda quick: [workloads.small_reply(5), workloads.event_stream(20)]
    )
    options = bench_module.Options(
        quick=True, json=None, only=["framing"], vms=None, rounds=None, target=None, real_qemu=0
    )
    rows = bench_module.framing_section(options, lambda text: None)
    variants = {row.variant for row in rows}
    assert {"python", f"{next(iter(framing.framer_classes()))} raw"} <= variants
    assert all(set(row.baselines) == set(framing.BASELINES) for row in rows)
    stream_rows = [row for row in rows if row.case == "1,000-event stream" or "event stream" in row.case]
    assert all("MB/s" in row.extra for row in stream_rows)


def test_bench_options_are_checked():
    assert bench("--only", "nothing").returncode == 2
    assert bench("--vms", "-1", "--only", "fleet").returncode == 2
    done = bench("--only", "real-qemu")
    assert done.returncode == 0 and "real-qemu: skipped, give the number of QEMUs" in done.stdout
    data = json.loads(bench("--only", "real-qemu", "--json", "-").stdout)
    assert data["rows"] == [] and data["skipped"][0].startswith("real-qemu: skipped")


@pytest.mark.qemu
def test_bench_against_real_qemu(tmp_path):
    from qmpcore.bench._qemu import QemuGroup, QemuMissing, find_qemu

    try:
        find_qemu()
    except QemuMissing as exc:
        if IN_CI:
            pytest.fail(str(exc))
        pytest.skip(str(exc))
    with QemuGroup(1, str(tmp_path)) as group:
        group.start()
        done = bench("--quick", "--only", "socket", "--target", group.paths[0], "--json", "-")
    assert done.returncode == 0, done.stderr
    rows = json.loads(done.stdout)["rows"]
    flood = [r for r in rows if r["case"].startswith("event flood")]
    assert flood and all(isinstance(r["qmpcore"], str) for r in flood)  # QEMU cannot flood
    assert all(r["qmpcore"] > 0 for r in rows if r["case"].startswith("round trip"))
    done = bench("--quick", "--only", "real-qemu", "--real-qemu", 3, "--rounds", 2)
    assert done.returncode == 0, done.stderr
    assert "3 QEMUs × 2 rounds: commands/s" in done.stdout


def test_benchmark_suite_collects_and_runs():
    """benchmarks/ stays out of the normal run but works with pytest-benchmark."""
    pytest.importorskip("pytest_benchmark")
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "benchmarks/bench_framing.py", "-q", "-p", "no:cacheprovider",
         "--benchmark-disable", "-k", "small-reply or events-1000"],
        capture_output=True, text=True, env=ENV, cwd=REPO, timeout=240,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-2000:]
    assert " passed" in done.stdout


def test_progress_shows_on_a_terminal_only():
    import pty
    import select
    import time

    master, slave = pty.openpty()
    proc = subprocess.Popen(
        [sys.executable, "-m", "qmpcore", "bench", "--quick", "--only", "fleet", "--vms", "5", "--rounds", "1"],
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=slave, env=ENV,
    )  # fmt: skip
    os.close(slave)
    seen = b""
    deadline = time.monotonic() + 120
    try:
        while proc.poll() is None and time.monotonic() < deadline:
            if select.select([master], [], [], 0.2)[0]:
                try:
                    seen += os.read(master, 65536)
                except OSError:
                    break
        assert proc.wait(30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stdout.close()
        os.close(master)
    assert b"\rfleet: starting 5 simulated VMs" in seen
    assert b"5 VMs" not in seen.split(b"\r")[-1]  # the line is cleared at the end
