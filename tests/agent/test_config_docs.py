"""The config tables in docs/agent.md and docs/mqtt.md are the specification: every literal
default there is the model's default, and every documented range is exactly what the
config accepts (its edges accepted, one step beyond refused, naming the key). An ``[audio]``
key belongs to one source's settings (or to all): it is tried with that source."""

import re
from pathlib import Path

import pytest

from harken.agent.config import ConfigError, parse_config, table_fields
from harken.agent.sources import SOURCES

DOCS = Path(__file__).resolve().parents[2] / "docs"


def table_rows() -> list[tuple[str, str, str]]:
    """(key, default, allowed) of every single-key row of both config tables."""
    rows = []
    for page in ("agent.md", "mqtt.md"):
        text = (DOCS / page).read_text()
        for line in text.splitlines():
            cells = [c.strip() for c in re.split(r"(?<!\\)\|", line.strip().strip("|"))]
            if len(cells) == 4 and re.fullmatch(r"`[a-z_]+\.[a-z_]+`", cells[0]):
                rows.append((cells[0].strip("`"), cells[1], cells[2]))
    return rows


ROWS = table_rows()
TABLES = table_fields()


def field(key: str):
    section, name = key.split(".")
    return TABLES[section][name]


def load(key: str, value) -> None:
    section, name = key.split(".")
    data = {"model": {"bundle": "b"}}
    data.setdefault(section, {})[name] = value
    if section == "audio" and name != "source":      # the first source that has the key
        data["audio"]["source"] = next(n for n, cls in SOURCES.items()
                                       if name in cls.Settings.model_fields)
    if data.get("audio", {}).get("source") == "file" and name != "file":
        data["audio"]["file"] = "x.wav"
    if section == "decision" and name in ("k_on", "n"):
        data["decision"] |= {"k_on": 1, "n": 100, name: value}
    parse_config(data, "agent.toml")


def literal(text: str):
    """A documented default as a Python value, or None when it is prose."""
    text = text.strip("`")
    if text in ("required", "-"):
        return None
    if text in ("true", "false"):
        return text == "true"
    if re.fullmatch(r"-?\d+", text):
        return int(text)
    if re.fullmatch(r"-?\d+\.\d+", text):
        return float(text)
    if re.fullmatch(r"[a-z][a-z0-9_.-]*", text):
        return text
    return None


def test_the_tables_cover_every_config_key():
    documented = {k for k, _, _ in ROWS}
    multi = {"mqtt.username", "mqtt.password", "mqtt.password_env", "mqtt.tls", "mqtt.ca_file",
             "mqtt.cert_file", "mqtt.key_file", "mqtt.tls_insecure"}   # grouped rows
    every = {f"{s}.{n}" for s, fields in TABLES.items() for n in fields}
    assert every - documented - multi == set()
    assert len(ROWS) >= 35


@pytest.mark.parametrize("key, default", [(k, d) for k, d, _ in ROWS
                                          if literal(d) is not None], ids=lambda v: str(v))
def test_documented_defaults_are_the_defaults(key, default):
    assert field(key).default == literal(default)


def test_required_and_unset_keys_are_as_documented():
    for key, default, _ in ROWS:
        if default == "required":
            assert field(key).is_required(), key
        elif default == "-":
            assert field(key).default is None, key


def _ranges():
    out = []
    for key, _, allowed in ROWS:
        if m := re.fullmatch(r"(-?[\d.]+) to (-?[\d.]+)", allowed):
            out.append((key, float(m[1]), True, float(m[2])))
        elif m := re.fullmatch(r"above (-?[\d.]+), up to (-?[\d.]+)", allowed):
            out.append((key, float(m[1]), False, float(m[2])))
        elif m := re.fullmatch(r"at least (-?[\d.]+)", allowed):
            out.append((key, float(m[1]), True, None))
    return out


@pytest.mark.parametrize("key, low, low_included, high", _ranges(), ids=lambda v: str(v))
def test_documented_ranges_are_exactly_what_is_accepted(key, low, low_included, high):
    integer = field(key).annotation is int
    step = 1 if integer else 1e-6
    cast = int if integer else float
    refuse = [low - step] + ([low] if not low_included else []) + \
        ([high + step] if high is not None else [])
    accept = ([low] if low_included else [low + step]) + ([high] if high is not None else [])
    for value in accept:
        load(key, cast(value))
    for value in refuse:
        with pytest.raises(ConfigError, match=rf"agent.toml: key '{re.escape(key)}' = "):
            load(key, cast(value))


@pytest.mark.parametrize("key, choices", [
    (k, [c.strip(" `") for c in a.split(",")]) for k, _, a in ROWS
    if re.fullmatch(r"`[a-z0-9-]+`(, `[a-z0-9-]+`)+", a)], ids=lambda v: str(v))
def test_documented_choices_are_accepted_and_nothing_else(key, choices):
    for choice in choices:
        load(key, choice)
    with pytest.raises(ConfigError, match=rf"key '{re.escape(key)}' = 'other'"):
        load(key, "other")
