# SPDX-License-Identifier: GPL-2.0-only
"""Is the simulator's behaviour unchanged?  Record it, then compare two records.

    python benchmarks/sim_identity.py record DIR [--runs N] [--tests]
    python benchmarks/sim_identity.py compare BEFORE_DIR AFTER_DIR

``record`` writes, from the work tree this script lives in:

* ``check.json``: ``kvmpv check --backend sim --json``;
* ``reboot.json``: ``kvmpv reboot --backend sim --memory 256M --cycles 2
  --mode both --json``;
* ``uv_calls.json``: for every registered check, run on a fresh simulated
  host ``N`` times, the simulator's records of its Ultravisor calls in the
  order they were issued (``SimulatedHost.uv_calls()``: command, handle, cc,
  rc, rrc, pages; the thread id is left out);
* with ``--tests``, ``tests.json``: the outcome of every test of the simulator
  test files (``pytest -rA``).

``compare`` strips what legitimately differs from run to run -- timings
(keys ending in ``_s``/``_ns``, step times), cgroup names (they carry the
pid), numbers with a time unit inside texts -- and prints every remaining
difference; exit 0 when there is none, 1 otherwise.  A check whose UV-call
order differed between the ``N`` runs of one record (threads racing) is
compared as the set of orders seen, and reported as such.

This is the proof asked for by issue 24 ("behaviour identical, byte for
byte") when the simulator is reorganised: record before, record after,
compare.  It uses only the simulator's public API, so the same script runs
against both trees.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

TEST_FILES = (
    "tests/test_sim.py",
    "tests/test_check.py",
    "tests/test_registry_coverage.py",
    "tests/test_reboot.py",
    "tests/test_sehdr.py",
)

#: keys whose values are timings or otherwise differ from run to run
_VOLATILE_KEY = re.compile(r"(_s|_ns|^s|^fraction|_cgroup|^pid|^tid|^timestamp|^started)$")
#: inside texts: a number with a time unit or a percentage, a cgroup name
_VOLATILE_TEXT = (
    (re.compile(r"kvmpv-[a-z]+-p\d+n\d+-[0-9a-f]+"), "<cgroup>"),
    (re.compile(r"\d+(\.\d+)?\s?(ms|us|µs|ns|s)\b"), "<t>"),
    (re.compile(r"\d+(\.\d+)?%"), "<t>"),
    # a step's time inside a dict quoted in a diagnostic: {'step': ..., 's': 0.0001, ...}
    (re.compile(r"'s': [0-9.e+-]+"), "'s': <t>"),
    (re.compile(r"\b(pid|tid) \d+"), r"\1 <n>"),
)


def _run_cli(args: list[str]) -> None:
    subprocess.run(
        [sys.executable, "-m", "kvmpv", *args],
        cwd=ROOT,
        check=False,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def _uv_calls(runs: int) -> dict[str, list[list[list[Any]]]]:
    from kvmpv.scenarios._harness import CheckRequest, default_sim_factory, run_checks

    out: dict[str, list[list[list[Any]]]] = {}
    hosts: list[Any] = []

    def factory(config: Any) -> Any:
        sys_ = default_sim_factory(config)
        hosts.append(sys_)
        return sys_

    for _ in range(runs):
        for chk_name in _check_names():
            hosts.clear()
            run_checks(CheckRequest(backend="sim", select=(chk_name,), sim_factory=factory))
            calls = [
                [c.name, c.cmd, c.handle, c.cc, c.rc, c.rrc, c.pages]
                for host in hosts
                for c in _host(host).uv_calls()
            ]
            out.setdefault(chk_name.replace("[", "").replace("]", ""), []).append(calls)
    return out


def _host(sys_: Any) -> Any:
    # AtomicSyscalls wraps the SimulatedHost; find the host whatever it is called.
    for name in ("_inner", "inner", "_sys", "sys"):
        inner = getattr(sys_, name, None)
        if inner is not None and hasattr(inner, "uv_calls"):
            return inner
    return sys_


def _check_names() -> list[str]:
    import kvmpv.scenarios.check  # noqa: F401  (registers the checks)
    from kvmpv.scenarios._harness import registry

    # exact names: select() matches substrings, so anchor with a glob
    return [f"[{c.name[0]}]{c.name[1:]}" for c in registry()]


def _tests(dest: Path) -> dict[str, str]:
    # pytest's output goes to a file, not a pipe: a test's helper process that
    # inherits the pipe would keep a reader waiting after pytest is done.
    log = dest / "tests.log"
    with open(log, "w") as out:
        subprocess.run(
            [sys.executable, "-m", "pytest", "-q", "-rA", "-p", "no:cacheprovider", *TEST_FILES],
            cwd=ROOT,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            check=False,
        )
    outcomes: dict[str, str] = {}
    for line in log.read_text().splitlines():
        m = re.match(r"^(PASSED|FAILED|SKIPPED|XFAIL|XPASS|ERROR) (\S+)", line)
        if m:
            outcomes[m.group(2)] = m.group(1)
    return outcomes


def record(dest: Path, runs: int, tests: bool) -> None:
    dest.mkdir(parents=True, exist_ok=True)
    _run_cli(["check", "--backend", "sim", "--json", str(dest / "check.json")])
    _run_cli(
        [
            "reboot", "--backend", "sim", "--memory", "256M", "--cycles", "2",
            "--mode", "both", "--json", str(dest / "reboot.json"),
        ]
    )  # fmt: skip
    (dest / "uv_calls.json").write_text(json.dumps(_uv_calls(runs), indent=1) + "\n")
    if tests:
        (dest / "tests.json").write_text(json.dumps(_tests(dest), indent=1) + "\n")


def normalise(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: normalise(v) for k, v in value.items() if not _VOLATILE_KEY.search(k)}
    if isinstance(value, list):
        return [normalise(v) for v in value]
    if isinstance(value, str):
        for pattern, repl in _VOLATILE_TEXT:
            value = pattern.sub(repl, value)
        return value
    return value


def _diff(a: Any, b: Any, path: str, out: list[str]) -> None:
    if isinstance(a, dict) and isinstance(b, dict):
        for k in sorted(set(a) | set(b)):
            if k not in a or k not in b:
                out.append(f"{path}/{k}: only in {'after' if k in b else 'before'}")
            else:
                _diff(a[k], b[k], f"{path}/{k}", out)
    elif isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        for i, (u, v) in enumerate(zip(a, b)):
            _diff(u, v, f"{path}[{i}]", out)
    elif a != b:
        out.append(f"{path}: {json.dumps(a)[:200]} != {json.dumps(b)[:200]}")


def compare(before: Path, after: Path) -> int:
    out: list[str] = []
    for name in ("check.json", "reboot.json"):
        a, b = (json.loads((d / name).read_text()) for d in (before, after))
        _diff(normalise(a), normalise(b), name, out)
    a, b = (json.loads((d / "uv_calls.json").read_text()) for d in (before, after))
    racy = []
    for chk in sorted(set(a) | set(b)):
        if chk not in a or chk not in b:
            out.append(f"uv_calls/{chk}: only in {'after' if chk in b else 'before'}")
            continue
        seen_a = {json.dumps(r) for r in a[chk]}
        seen_b = {json.dumps(r) for r in b[chk]}
        if len(seen_a) > 1 or len(seen_b) > 1:
            racy.append(chk)
            # threads race: same calls (as a multiset) is what can be asked
            seen_a = {json.dumps(sorted(r)) for r in a[chk]}
            seen_b = {json.dumps(sorted(r)) for r in b[chk]}
        if seen_a != seen_b:
            out.append(f"uv_calls/{chk}: UV calls differ")
    total = sum(len(r[0]) for r in a.values() if r)
    if (before / "tests.json").exists() and (after / "tests.json").exists():
        ta, tb = (json.loads((d / "tests.json").read_text()) for d in (before, after))
        for t in sorted(set(ta) | set(tb)):
            if t not in tb:
                out.append(f"tests/{t}: {ta[t]} before, removed after")
            elif t not in ta:
                out.append(f"tests/{t}: new after ({tb[t]})")
            elif ta[t] != tb[t]:
                out.append(f"tests/{t}: {ta[t]} before, {tb[t]} after")
    for line in out:
        print(line)
    print(
        f"{len(out)} difference(s); {len(a)} checks' UV-call records ({total} calls in the "
        f"first run), {len(racy)} of them compared as multisets (thread order varies: "
        f"{', '.join(racy) or 'none'})"
    )
    return 1 if out else 0


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    rec = sub.add_parser("record", help="record the simulator's behaviour into DIR")
    rec.add_argument("dir", type=Path)
    rec.add_argument("--runs", type=int, default=3, help="runs of each check for UV calls")
    rec.add_argument("--tests", action="store_true", help="also record the sim tests' outcomes")
    cmp_ = sub.add_parser("compare", help="compare two records; exit 1 on a difference")
    cmp_.add_argument("before", type=Path)
    cmp_.add_argument("after", type=Path)
    args = parser.parse_args(argv)
    if args.cmd == "record":
        record(args.dir, args.runs, args.tests)
        return 0
    return compare(args.before, args.after)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
