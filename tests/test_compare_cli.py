"""``minivmm compare`` and ``minivmm timing --baseline/--threshold/--format`` from the command line: the
exit-code contract (0 / 1 / 125, 2 for bad input) on recorded JSON, no kernel needed, plus a live run."""

from __future__ import annotations

import json
import os

import pytest
from conftest import run_cli
from jsonschemas import validate
from test_compare import MEMSLOT, A, B, _bad_files, noisy_pair, planted, recorded, write

from minivmm.cli.app import main


def cli(capsys, *args: str) -> tuple[int, str, str]:
    """Run the command line in-process: (exit code, stdout, stderr)."""
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def one_line_error(err: str, fragment: str) -> None:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("minivmm: error: ") and fragment in lines[0], err


def test_compare_two_runs_no_significant_change(capsys):
    code, out, err = cli(capsys, "compare", str(A), str(B))
    assert code == 0 and err == ""
    assert out.strip().splitlines()[-1] == "verdict: no significant change"


def test_compare_names_the_planted_regression_in_text_json_and_plot(capsys, tmp_path):
    slow = write(tmp_path, "slow.json", planted())
    png = tmp_path / "cmp.png"
    code, out, _ = cli(capsys, "compare", str(A), slow, "--plot", str(png))
    assert code == 0
    assert "verdict: changed significantly: #9 KVM_SET_USER_MEMORY_REGION, slot 0" in out
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and f"plot: {png}" in out
    code, out, _ = cli(capsys, "compare", str(A), str(B), slow, "--json")
    doc = json.loads(out)
    validate(doc, "compare")
    assert [(c["file"], c["step"]) for c in doc["changed"]] == [(2, MEMSLOT + 1)]


def test_compare_warns_when_the_hosts_differ(capsys, tmp_path):
    other = recorded(B)
    other["host"]["hz"] = 1000
    code, out, _ = cli(capsys, "compare", str(A), write(tmp_path, "hz1000.json", other))
    assert code == 0 and "warning: HZ differs" in out


def test_gate_exit_codes_on_recorded_runs(capsys, tmp_path):
    code, out, _ = cli(capsys, "compare", "--gate", str(A), str(B))
    assert code == 0 and "gate: pass" in out
    code, out, _ = cli(capsys, "compare", "--gate", str(A), write(tmp_path, "slow.json", planted()))
    assert code == 1 and "gate: regressed: #9 KVM_SET_USER_MEMORY_REGION, slot 0" in out
    # +35% (half a jiffy): regressed at the default 20%, not at 50%.
    half = write(tmp_path, "half.json", planted(jiffies=0.5))
    assert cli(capsys, "compare", "--gate", str(A), half)[0] == 1
    assert cli(capsys, "compare", "--gate", "--threshold", "50%", str(A), half)[0] == 0
    few = recorded(B)
    for s in few["steps"]:
        s["samples_ns"] = s["samples_ns"][:4]
    code, out, _ = cli(capsys, "compare", "--gate", str(A), write(tmp_path, "few.json", few))
    assert code == 125 and "too few repetitions" in out
    base, noisy = noisy_pair()
    code, out, _ = cli(capsys, "compare", "--gate", "--json", write(tmp_path, "base.json", base),
                       write(tmp_path, "noisy.json", noisy))
    assert code == 125
    doc = json.loads(out)
    validate(doc)
    assert doc["gate"]["outcome"] == "unusable"
    assert doc["gate"]["undecided"] == ["#9 KVM_SET_USER_MEMORY_REGION, slot 0"]


def test_gate_exit_codes_through_the_console_script():
    """The same contract as a process exit status (what git bisect run sees)."""
    assert run_cli("compare", "--gate", str(A), str(B)).returncode == 0


def test_compare_bad_files_are_one_line_exit_2(capsys, tmp_path):
    for name, (path, fragment) in _bad_files(tmp_path).items():
        code, out, err = cli(capsys, "compare", str(A), path)
        assert code == 2 and out == "", name
        one_line_error(err, fragment)


def test_compare_bad_usage_is_one_line_exit_2(capsys, tmp_path):
    other = recorded(B)
    other["sequence"] = "firecracker"
    mismatched = write(tmp_path, "fc.json", other)
    link = tmp_path / "link.png"
    os.symlink(tmp_path / "elsewhere.png", link)
    for args, fragment in (((str(A),), "at least two files"),
                           ((str(A), mismatched), "not comparable"),
                           (("--threshold", "20", str(A), str(B)), "is not a percentage"),
                           (("--threshold", "abc%", str(A), str(B)), "is not a percentage"),
                           (("--gate", str(A), str(B), str(B)), "exactly two files"),
                           (("--alpha", "2", str(A), str(B)), "--alpha"),
                           (("--plot", str(link), str(A), str(B)), "symbolic link"),
                           (("--plot", str(tmp_path / "x.txt"), str(A), str(B)), "must end in .png")):
        code, out, err = cli(capsys, "compare", *args)
        assert code == 2 and out == "", args
        one_line_error(err, fragment)
    assert not (tmp_path / "elsewhere.png").exists()


def test_timing_gate_bad_input_is_refused_before_measuring(capsys, tmp_path):
    """No KVM needed: the baseline and the options are checked first."""
    fc = recorded(B)
    fc["sequence"] = "firecracker"
    pinned = ("--platform", "pvm", "--hz", "250", "-r", "1")
    cases = [
        (("--baseline", str(tmp_path / "none.json")), "--baseline", "does not exist"),
        (("--baseline", write(tmp_path, "fc.json", fc), "--sequence", "registrations-first"), "",
         "times sequence 'firecracker', this run would time 'registrations-first'"),
        (("--threshold", "20%"), "", "--threshold needs --baseline"),
        (("--baseline", str(A), "--threshold", "twenty"), "", "is not a percentage"),
        (("--json", "--format", "openmetrics"), "", "--json cannot be used with --format openmetrics"),
        (("--format", "yaml"), "", "--format"),
    ]
    for name, (path, fragment) in _bad_files(tmp_path).items():
        if name != "missing":
            cases.append((("--baseline", path), "--baseline", fragment))
    for args, prefix, fragment in cases:
        code, out, err = cli(capsys, "timing", *pinned, *args)
        assert code == 2 and out == "", (args, err)
        one_line_error(err, fragment)
        assert prefix in err


def test_timing_gate_without_kvm_is_unusable_125(capsys, tmp_path):
    code, out, err = cli(capsys, "timing", "--platform", "pvm", "--hz", "250", "-r", "1", "--baseline", str(A),
                         "--kvm", str(tmp_path / "kvm"))
    assert code == 125 and out == ""
    one_line_error(err, "gate exit 125")
    # Without a gate the same host is exit 4 (cannot run here), as before.
    code, _, _ = cli(capsys, "timing", "--platform", "pvm", "--hz", "250", "-r", "1", "--kvm", str(tmp_path / "kvm"))
    assert code == 4


@pytest.mark.kvm
def test_timing_gate_and_openmetrics_on_the_host(tmp_path):
    """A live run against a recorded baseline: the decision depends on this host's load (exit 0, 1 or
    125 are all the gate working); what must hold is the document and the format."""
    from prometheus_client.openmetrics.parser import text_string_to_metric_families

    proc = run_cli("timing", "-r", "12", "-n", "50", "--baseline", str(A), "--json", timeout=180)
    assert proc.returncode in (0, 1, 125), proc.stderr
    doc = json.loads(proc.stdout)
    validate(doc, "timing")
    assert doc["sequence"] == "registrations-first"  # the baseline's, since --sequence was not given
    assert doc["gate"]["outcome"] == {0: "pass", 1: "regressed", 125: "unusable"}[proc.returncode]
    assert f"minivmm: gate: {doc['gate']['text']}" in proc.stderr
    proc = run_cli("timing", "-r", "3", "-n", "50", "--format", "openmetrics", timeout=180)
    assert proc.returncode == 0, proc.stderr
    names = {f.name for f in text_string_to_metric_families(proc.stdout)}
    assert "minivmm_timing_step_duration_seconds" in names and proc.stdout.endswith("# EOF\n")


def test_compare_help_fits_80_columns():
    import subprocess
    import sys

    from conftest import ROOT
    proc = subprocess.run([sys.executable, "-m", "minivmm", "compare", "--help"], capture_output=True, text=True,
                          cwd=ROOT, env={**os.environ, "COLUMNS": "80"})
    assert proc.returncode == 0 and "--gate" in proc.stdout
    assert max(len(line) for line in proc.stdout.splitlines()) <= 80


def test_timing_gate_on_a_kernel_without_kvm_or_config_is_unusable_not_bad(capsys, monkeypatch):
    """A bisect step that boots a kernel without the KVM module, or without its config exposed, must be
    skipped (125), not called bad; without a gate the same facts are the user's to supply (exit 2)."""
    import minivmm.host
    from minivmm.host import HostInfo

    bare = HostInfo(kernel="6.17.0-test", machine="x86_64", kvm_path="/dev/kvm",
                    kvm_error="/dev/kvm does not exist (is the kvm module loaded?)")
    monkeypatch.setattr(minivmm.host, "read_host_info", lambda path="/dev/kvm": bare)
    code, _, err = cli(capsys, "timing", "-r", "1", "--baseline", str(A))
    assert code == 125
    one_line_error(err, "/dev/kvm does not exist (is the kvm module loaded?) (the measurement is unusable")
    code, _, err = cli(capsys, "timing", "-r", "1", "--platform", "pvm", "--baseline", str(A))
    assert code == 125
    one_line_error(err, "cannot read CONFIG_HZ")
    code, _, err = cli(capsys, "timing", "-r", "1", "--platform", "pvm")
    assert code == 2
    one_line_error(err, "cannot read CONFIG_HZ")


def test_openmetrics_without_prometheus_client_is_one_line_before_any_work(capsys, monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_prometheus(name, *args, **kwargs):  # type: ignore[no-untyped-def]
        if name.startswith("prometheus_client"):
            raise ImportError(name)
        return real_import(name, *args, **kwargs)
    monkeypatch.setattr(builtins, "__import__", no_prometheus)
    code, out, err = cli(capsys, "timing", "--format", "openmetrics", "--platform", "pvm", "--hz", "250", "-r", "1",
                         "--kvm", "/nonexistent/kvm")
    assert code == 2 and out == ""
    one_line_error(err, "pip install 'minivmm[metrics]'")
