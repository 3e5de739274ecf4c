# SPDX-License-Identifier: GPL-2.0-only
"""The regression corpus (fixtures/regressions/corpus.json) is well-formed and says what it claims.

The corpus lists upstream kernel fixes in the PV and async-teardown paths,
what a VMM could observe while each bug was present, and which ``kvmpv check``
would catch it (fixtures/regressions/README.md).  Its structure is checked with
the JSON Schema next to it, by the ``jsonschema`` library (not by code written
here); the rules a schema cannot express are checked below: unique ids that
look like commit hashes and do not shadow each other, release order, every
named check registered, and docs/regressions.md showing the same table.

Each rule is also shown rejecting a corpus broken on purpose, so that none of
these tests passes by asserting nothing.
"""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from kvmpv.scenarios import check as chk

ROOT = Path(__file__).resolve().parent.parent
CORPUS = ROOT / "fixtures" / "regressions" / "corpus.json"
SCHEMA = ROOT / "fixtures" / "regressions" / "corpus.schema.json"
DOC = ROOT / "docs" / "regressions.md"

HEX_ID = re.compile(r"^[0-9a-f]{12,40}$")


def load(path: Path) -> Any:
    with path.open(encoding="utf-8") as f:
        return json.load(f)


def schema_errors(corpus: Any) -> list[str]:
    """Every violation of corpus.schema.json, as "path: message"."""
    validator = jsonschema.Draft202012Validator(load(SCHEMA))
    out = []
    for err in sorted(validator.iter_errors(corpus), key=lambda e: list(e.absolute_path)):
        where = "/".join(str(p) for p in err.absolute_path) or "(top)"
        out.append(f"{where}: {err.message}")
    return out


def release_key(release: str) -> tuple[int, ...]:
    return tuple(int(x) for x in release.lstrip("v").split("."))


def rule_errors(corpus: list[dict[str, Any]], registered: set[str]) -> list[str]:
    """What the schema cannot say: ids, order, check names (empty if all hold)."""
    out = []
    ids = [e["id"] for e in corpus]
    for i in sorted({i for i in ids if ids.count(i) > 1}):
        out.append(f"{i}: listed twice")
    for a in ids:
        for b in ids:
            if a != b and b.startswith(a):
                out.append(f"{a}: a prefix of {b} (abbreviated ids must stay unambiguous)")
    releases = [release_key(e["release"]) for e in corpus]
    if releases != sorted(releases):
        out.append("entries are not ordered by release")
    for e in corpus:
        if e["check"] is not None and e["check"] not in registered:
            out.append(f"{e['id'][:12]}: check {e['check']!r} is not in the kvmpv check registry")
        if e["fixes"] is not None and e["fixes"][:12] == e["id"][:12]:
            out.append(f"{e['id'][:12]}: fixes itself")
    return out


def doc_rows(text: str) -> dict[str, list[str]]:
    """The table of docs/regressions.md: abbreviated id -> cells."""
    rows = {}
    for line in text.splitlines():
        m = re.match(r"^\| `([0-9a-f]{12})` \|", line)
        if m:
            rows[m.group(1)] = [c.strip() for c in line.strip().strip("|").split("|")]
    return rows


def doc_errors(corpus: list[dict[str, Any]], text: str) -> list[str]:
    """Where the docs table and the corpus disagree (empty if they agree)."""
    rows = doc_rows(text)
    out = []
    want = {e["id"][:12]: e for e in corpus}
    for short in sorted(set(rows) - set(want)):
        out.append(f"{short}: in docs/regressions.md, not in the corpus")
    for short, e in want.items():
        if short not in rows:
            out.append(f"{short}: in the corpus, missing from docs/regressions.md")
            continue
        cells = rows[short]
        check = f"`{e['check']}`" if e["check"] else "none"
        expect = {
            "release": (cells[2], e["release"]),
            "effect": (cells[3].split(" ")[-1].strip("()") if not e["observable"] else cells[3],
                       e["effect"]),
            "check": (cells[4], check),
            "function": (cells[5], f"`{e['sim_function']}`"),
            "deviation": (cells[7] if len(cells) > 7 else "", _cell(e, "deviation")),
            "caught by": (cells[8] if len(cells) > 8 else "", _cell(e, "caught_by")),
        }
        if not cells[1].startswith(e["title"]):
            out.append(f"{short}: title {cells[1]!r} is not {e['title']!r}")
        for what, (got, exp) in expect.items():
            if got != exp:
                out.append(f"{short}: {what} {got!r} in the docs, {exp!r} in the corpus")
    observable = [e for e in corpus if e["observable"]]
    counts = f"{len(corpus)} fixes; {len(observable)} observable"
    if counts not in " ".join(text.split()):
        out.append(f"docs/regressions.md does not state the counts {counts!r}")
    caught = sum(1 for e in observable if e["caught_by"])
    now = f"Caught now: {caught} of the {len(observable)}"
    if now not in " ".join(text.split()):
        out.append(f"docs/regressions.md does not state {now!r}")
    return out


def _cell(e: dict[str, Any], key: str) -> str:
    """The docs cell for a deviation or caught_by value: name, none (observable), n/a."""
    if e[key]:
        return f"`{e[key]}`"
    return "none" if e["observable"] else "n/a"


@pytest.fixture(scope="module")
def corpus() -> list[dict[str, Any]]:
    data = load(CORPUS)
    assert isinstance(data, list)
    return data


@pytest.fixture(scope="module")
def registered() -> set[str]:
    return {c.name for c in chk.registry()}


def test_schema_itself_is_valid() -> None:
    jsonschema.Draft202012Validator.check_schema(load(SCHEMA))


def test_corpus_matches_schema(corpus: list[dict[str, Any]]) -> None:
    assert schema_errors(corpus) == []


def test_corpus_rules(corpus: list[dict[str, Any]], registered: set[str]) -> None:
    assert rule_errors(corpus, registered) == []


def test_ids_look_like_commits(corpus: list[dict[str, Any]]) -> None:
    """Every id and every Fixes: target is an (abbreviated) commit hash, never a title or a URL."""
    bad = [e["id"] for e in corpus if not HEX_ID.match(e["id"])]
    bad += [e["fixes"] for e in corpus if e["fixes"] and not HEX_ID.match(e["fixes"].split()[0])]
    assert bad == []


def test_every_observable_entry_names_effect_and_way_to_see_it(
    corpus: list[dict[str, Any]],
) -> None:
    for e in corpus:
        if e["observable"]:
            assert e["effect"] and e["detection"] and e["sim_function"], e["id"]
        else:
            assert e["why_not_observable"], e["id"]


def test_docs_table_matches_corpus(corpus: list[dict[str, Any]]) -> None:
    assert doc_errors(corpus, DOC.read_text(encoding="utf-8")) == []


def test_readme_links_the_docs_page() -> None:
    assert "docs/regressions.md" in (ROOT / "README.md").read_text(encoding="utf-8")


# --- each rule shown able to fail ------------------------------------------------


def _broken(corpus: list[dict[str, Any]], index: int, **change: Any) -> list[dict[str, Any]]:
    out = copy.deepcopy(corpus)
    for key, value in change.items():
        if value is KeyError:
            del out[index][key]
        else:
            out[index][key] = value
    return out


def _not_yet_modelled(corpus: list[dict[str, Any]]) -> tuple[int, list[dict[str, Any]]]:
    """The corpus with its first caught entry turned back into a fix the simulator
    does not model yet: no deviation, a reason, and what to model first."""
    i = next(i for i, e in enumerate(corpus) if e["observable"] and e["deviation"])
    pending = _broken(
        corpus, i, deviation=None, caught_by=None, sim_models=False, check=None,
        no_deviation="The simulator does not model it yet.", model_first="The behaviour.",
    )  # fmt: skip
    return i, pending


def _first(corpus: list[dict[str, Any]], observable: bool) -> int:
    return next(i for i, e in enumerate(corpus) if e["observable"] is observable)


@pytest.mark.parametrize(
    ("change", "complaint"),
    [
        ({"id": "KVM: s390: pv: fix"}, "does not match"),
        ({"id": "292a7d6"}, "does not match"),
        ({"release": "6.4"}, "does not match"),
        ({"files": ["virt/kvm/kvm_main.c"]}, "does not match"),
        ({"fixes": "fb491d5500a7 KVM: s390: pv: asynchronous destroy"}, "is not valid"),
        ({"effect": "host_crash"}, "is not one of"),
        ({"why_not_observable": "it is"}, "should not be valid"),
        ({"sources": []}, "should be non-empty"),
        ({"unverified": ["vibes"]}, "is not one of"),
        ({"sim_function": "kvm_s390_pv_set_aside()"}, "does not match"),
        ({"title": " trailing space "}, "does not match"),
        ({"detection": KeyError}, "is a required property"),
        ({"surprise": 1}, "Additional properties"),
    ],
)
def test_schema_rejects_a_broken_observable_entry(
    corpus: list[dict[str, Any]], change: dict[str, Any], complaint: str
) -> None:
    errors = schema_errors(_broken(corpus, _first(corpus, True), **change))
    assert any(complaint in err for err in errors), errors


@pytest.mark.parametrize(
    ("change", "complaint"),
    [
        ({"why_not_observable": KeyError}, "is a required property"),
        ({"effect": "errno"}, "is not one of"),
        ({"check": "protected_boot"}, "is not of type 'null'"),
    ],
)
def test_schema_rejects_a_broken_hidden_entry(
    corpus: list[dict[str, Any]], change: dict[str, Any], complaint: str
) -> None:
    errors = schema_errors(_broken(corpus, _first(corpus, False), **change))
    assert any(complaint in err for err in errors), errors


def test_schema_wants_a_reason_for_a_missing_fixes_tag(corpus: list[dict[str, Any]]) -> None:
    i = next(i for i, e in enumerate(corpus) if e["fixes"] and "note" not in e)
    broken = _broken(corpus, i, fixes=None, unverified=[])
    assert schema_errors(broken) != []
    assert schema_errors(_broken(corpus, i, fixes=None, unverified=["fixes"])) == []


def test_schema_wants_a_deviation_or_a_reason(corpus: list[dict[str, Any]]) -> None:
    """An observable entry names its deviation and check, or says why it has none."""
    # Every observable fix has its deviation now: a schema-valid entry without one
    # (as a newly found fix starts) is made from the first caught entry.
    i, pending = _not_yet_modelled(corpus)
    assert schema_errors(pending) == []
    assert schema_errors(_broken(pending, i, no_deviation=KeyError)) != []
    j = next(j for j, e in enumerate(corpus) if e["deviation"])
    assert schema_errors(_broken(corpus, j, caught_by=None)) != []
    assert schema_errors(_broken(corpus, j, deviation="SegmentAscePrepareHost")) != []
    hidden = _first(corpus, False)
    assert schema_errors(_broken(corpus, hidden, deviation="Regress_" + "0" * 12)) != []


def test_schema_wants_model_first_when_the_simulator_lacks_it(
    corpus: list[dict[str, Any]],
) -> None:
    i, pending = _not_yet_modelled(corpus)
    assert schema_errors(pending) == []
    assert schema_errors(_broken(pending, i, model_first=None)) != []


def test_rules_reject_broken_corpora(corpus: list[dict[str, Any]], registered: set[str]) -> None:
    dup = [*copy.deepcopy(corpus), copy.deepcopy(corpus[0])]
    assert any("listed twice" in e for e in rule_errors(dup, registered))
    prefix = copy.deepcopy(corpus)
    prefix.append(dict(copy.deepcopy(corpus[-1]), id=corpus[0]["id"][:12]))
    assert any("a prefix of" in e for e in rule_errors(prefix, registered))
    assert any("ordered" in e for e in rule_errors(list(reversed(corpus)), registered))
    named = next(i for i, e in enumerate(corpus) if e["check"])
    unknown = _broken(corpus, named, check="prepare_mem_limit_2g")
    assert any("not in the kvmpv check registry" in e for e in rule_errors(unknown, registered))
    itself = _broken(corpus, 0, fixes=f'{corpus[0]["id"][:12]} ("{corpus[0]["title"]}")')
    assert any("fixes itself" in e for e in rule_errors(itself, registered))


def test_docs_check_sees_a_stale_table(corpus: list[dict[str, Any]]) -> None:
    text = DOC.read_text(encoding="utf-8")
    first = corpus[0]["id"][:12]
    line = next(ln for ln in text.splitlines() if ln.startswith(f"| `{first}` |"))
    assert doc_errors(corpus, text.replace(line + "\n", "")) != []
    changed = _broken(corpus, 0, release="v6.2")
    assert any("release" in e for e in doc_errors(changed, text))
    assert any("counts" in e for e in doc_errors([*corpus, copy.deepcopy(corpus[0])], text))
