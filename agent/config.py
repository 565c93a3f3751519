"""The agent's TOML configuration, validated on load (pydantic): an error names the file,
the key, the bad value and what is allowed; unknown keys are errors. Relative paths are
relative to the config file. A calibration override (``harken calibrate``) replaces the
bundle's threshold without touching the bundle.

The tables that belong to a plugin are the plugin's own: ``[audio]`` is the settings model
of the source that ``audio.source`` names (each source in agent/sources/ declares it, tagged
``source: Literal["name"]``, as Frigate's detector plugins do), and each sink table
(``[output]``, ``[mqtt]``, ...) is the ``Settings`` of the sinks in agent/sinks/ that name
it. The config model is assembled from those two registries (``config_model``), so a new
source or sink is checked here without a line of this file changing; ``agent.plugins``
imports modules that register more before the rest of the config is read
(docs/agent.md)."""

from __future__ import annotations

import importlib
import os
import re
import stat
from pathlib import Path
from typing import Annotated, Any, Literal, Union

from pydantic import Field, TypeAdapter, ValidationError, create_model, model_validator
from pydantic.fields import FieldInfo

from harken.agent.decision.override import read_override  # noqa: F401 (re-exported)
from harken.agent.sinks import SINKS
from harken.agent.sinks.jsonlines import OutputSection
from harken.agent.sinks.mqtt.settings import MqttSection
from harken.agent.sources import SOURCES
from harken.agent.sources.base import check_one_per_process
from harken.common.errors import ConfigError
from harken.common.settings import (Count, Finite, Name, PathText, Seconds, Section as _Section,
                                    first_line, resolve_password, warn_if_others_can_read)

__all__ = ["Config", "ConfigError", "MqttSection", "OutputSection", "config_model",
           "load_config", "parse_config", "resolve_password", "table_fields"]

try:
    import tomllib
except ModuleNotFoundError:           # Python 3.10
    import tomli as tomllib           # type: ignore[no-redef]


_PLUGIN_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")
# their values are never echoed in an error (mqtt.brokers: a URL may carry a password), nor
# is a table that holds one (an error of the whole [mqtt] table)
SECRET_KEYS = ("password", "brokers")
DEFAULT_SOURCE = "mic"            # audio.source when the config names none
# what one device can watch (64 channels on one input, a few inputs) and a config is:
# far above any real one, far below what would take minutes and gigabytes to check
MAX_MACHINES = 256
MAX_CONFIG_BYTES = 1 << 20
SHOWN = 60                        # characters of a refused value echoed in an error


class AgentSection(_Section):
    node: Name = "harken-node"
    machine: Name = "machine"
    section: Count(0, 99) = 0
    state_dir: PathText = "state"     # calibration override, counters
    # modules imported before the rest of the config is read: sources and sinks kept
    # outside the package register themselves on import (docs/agent.md "Plugins")
    plugins: list[Annotated[str, Field(pattern=_PLUGIN_NAME.pattern, max_length=200)]] = \
        Field([], max_length=64)


class ModelSection(_Section):
    bundle: PathText
    artifact: Literal["tflite-int8", "onnx-int8", "onnx-fp32", "tflite-fp32"] | None = None
    threads: Count(1, 64, "threads") = 1


class DecisionSection(_Section):
    interval_s: Seconds(0.5, 600) = 10.0
    k_on: Count(1, 100, "intervals") = 2
    n: Count(1, 100, "intervals") = 3
    n_off: Count(1, 100, "intervals") = 3
    threshold: Finite | None = None   # overrides bundle and calibration when set

    @model_validator(mode="after")
    def _k_within_n(self):
        if self.k_on > self.n:
            raise ValueError(f"decision.k_on ({self.k_on}) cannot exceed decision.n ({self.n})")
        return self


class MachineEntry(_Section):
    """One ``[[machines]]`` entry: a machine this device watches. Its ``model``, ``audio``
    and ``decision`` tables override the top-level ones key by key, so what all machines
    share is written once."""
    name: Name
    section: Count(0, 99) | None = None       # default: agent.section
    channel: Count(1, 64) | None = None       # shorthand for audio.channel
    model: dict[str, Any] = {}
    audio: dict[str, Any] = {}
    decision: dict[str, Any] = {}


class Config(_Section):
    """A loaded config. Its tables are fields of the subclass that ``config_model`` builds
    from the registries: ``agent``, ``model``, ``audio`` (the source's settings),
    ``decision``, one per sink table (``output``, ``mqtt``, ...), ``machines``."""

    @model_validator(mode="before")
    @classmethod
    def _default_source(cls, data: Any) -> Any:
        # the source's tag picks its settings model; a config that names none means mic
        if isinstance(data, dict) and isinstance(data.get("audio"), dict) \
                and "source" not in data["audio"]:
            data = {**data, "audio": {"source": DEFAULT_SOURCE, **data["audio"]}}
        return data

    @model_validator(mode="after")
    def _one_way_to_name_machines(self):
        if self.machines and "machine" in self.agent.model_fields_set:
            raise ValueError("give agent.machine (one machine) or [[machines]] entries, "
                             "not both")
        # names that differ only in case share a state file on a case-insensitive file
        # system (an SD card's FAT, a macOS volume) and read as one machine to a person
        folded: dict[str, list[str]] = {}
        for m in self.machines:
            folded.setdefault(m.name.casefold(), []).append(m.name)
        twice = sorted({n for v in folded.values() if len(v) > 1 for n in v})
        if twice:
            raise ValueError(f"machine names must differ, in more than letter case too "
                             f"(topics and state files are named after them): {twice} "
                             f"given more than once")
        return self

    @property
    def multi(self) -> bool:
        return bool(self.machines)

    def machine_configs(self) -> list[Config]:
        """One single-machine config per watched machine: this config itself without
        ``[[machines]]``, else one view per entry (its tables merged over the top-level
        ones; each sink table made per machine, e.g. MQTT client id and outbox file)."""
        if not self.machines:
            if self.model is None:
                raise ConfigError(f"{self.source_file}: key 'model.bundle' is required")
            return [self]
        views = [self._machine_view(i, m) for i, m in enumerate(self.machines)]
        check_one_per_process(views, self.source_file)       # one stdin per process
        return views

    def select(self, machine: str | None) -> list[Config]:
        """The machine views a command works on: all of them, or the one named (a
        command-line ``--machine``); an unknown name is refused, listing the known ones."""
        views = self.machine_configs()
        if machine is None:
            return views
        chosen = [v for v in views if v.agent.machine == machine]
        if not chosen:
            raise ConfigError(f"{self.source_file}: no machine {machine!r} (machines: "
                              f"{[v.agent.machine for v in views]})")
        return chosen

    def _machine_view(self, i: int, m: MachineEntry) -> Config:
        where = f"machines[{i}] ({m.name})"
        audio = dict(m.audio)
        if m.channel is not None:
            if "channel" in audio:
                raise ConfigError(f"{self.source_file}: {where}: give 'channel' or "
                                  f"'audio.channel', not both")
            audio["channel"] = m.channel
        top_model = self.model.model_dump(exclude_unset=True) if self.model else {}
        parts = {"model": _merged(ModelSection, "model", top_model, m.model, self.source_file,
                                  where),
                 "audio": _merged_audio(self.audio.model_dump(exclude_unset=True), audio,
                                        self.source_file, where),
                 "decision": _merged(DecisionSection, "decision",
                                     self.decision.model_dump(exclude_unset=True),
                                     m.decision, self.source_file, where)}
        section = self.agent.section if m.section is None else m.section
        sinks = {table: getattr(self, table).for_machine(m.name) for table in sink_tables()}
        return self.model_copy(update={
            **parts, **sinks, "machines": [],
            "agent": self.agent.model_copy(update={"machine": m.name, "section": section})})

    def path(self, value: str) -> Path:
        """A path from the config, relative to the config file's folder."""
        p = Path(value).expanduser()
        return p if p.is_absolute() or not self.source_file else \
            Path(self.source_file).parent / p

    def writable_folder(self, key: str, value: str) -> Path:
        """The folder config key ``key`` names, created if needed; a ConfigError naming
        the key when it cannot be created or written (a file in the way, permissions)."""
        folder = self.path(value)
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ConfigError(f"{self.source_file}: key '{key}' = {value!r}: cannot create "
                              f"the folder {folder} ({exc.strerror or exc})") from None
        if not os.access(folder, os.W_OK | os.X_OK):
            raise ConfigError(f"{self.source_file}: key '{key}' = {value!r}: the folder "
                              f"{folder} is not writable by this user")
        return folder

    def mqtt_settings(self) -> MqttSection:
        """``[mqtt]`` with its certificate paths made relative to the config file."""
        m = self.mqtt
        return m.model_copy(update={k: str(self.path(v)) for k in ("ca_file", "cert_file",
                                                                  "key_file")
                                    if (v := getattr(m, k))})

    @property
    def override_file(self) -> Path:
        return self.path(self.agent.state_dir) / f"threshold-{self.agent.machine}.json"

    @property
    def bank_file(self) -> Path:
        """Where ``harken enroll`` keeps this machine's enrolled bank."""
        return self.path(self.agent.state_dir) / f"enrolled-{self.agent.machine}.npz"


# -- the model, assembled from the registries ---------------------------------------------

RESERVED = ("agent", "model", "audio", "decision", "machines", "source_file")


def sink_tables() -> dict[str, type[_Section]]:
    """Each sink table and its settings model, in sink registration order; sinks that
    share a table must name the same model."""
    tables: dict[str, type[_Section]] = {}
    for cls in [c for c in SINKS.values() if c.table is not None]:
        if cls.table in RESERVED or tables.get(cls.table, cls.Settings) is not cls.Settings:
            raise TypeError(f"sink {cls.name!r}: table [{cls.table}] is taken by another "
                            f"model")
        tables[cls.table] = cls.Settings
    return tables


_BUILT: dict[tuple, tuple[type[Config], TypeAdapter]] = {}


def _built() -> tuple[type[Config], TypeAdapter]:
    """The config model and the ``[audio]`` union for what is registered now (rebuilt only
    when a plugin has registered more)."""
    key = (tuple(SOURCES.values()), tuple(SINKS.values()))
    if key not in _BUILT:
        models = tuple(cls.Settings for cls in SOURCES.values())
        audio = Annotated[Union[models], Field(discriminator="source")] \
            if len(models) > 1 else models[0]
        fields: dict[str, Any] = {
            "agent": (AgentSection, AgentSection()),
            "model": (ModelSection | None, None),  # required, unless every machine names one
            "audio": (audio, SOURCES[DEFAULT_SOURCE].Settings()),
            "decision": (DecisionSection, DecisionSection()),
            **{t: (model, model()) for t, model in sink_tables().items()},
            "machines": (list[MachineEntry], Field([], max_length=MAX_MACHINES)),
            "source_file": (str, "")}
        model = create_model("Config", __base__=Config, __module__=__name__, **fields)
        _BUILT.clear()
        _BUILT[key] = model, TypeAdapter(audio)
    return _BUILT[key]


def config_model() -> type[Config]:
    """The config model of the sources and sinks registered now."""
    return _built()[0]


config_model()      # built at import (a sink table taken twice fails here); again on a plugin


def table_fields() -> dict[str, dict[str, FieldInfo]]:
    """Every table's keys: ``[audio]`` holds every source's (the default source's first),
    so that the documentation can be checked against them (tests/agent/test_config_docs.py)."""
    audio: dict[str, FieldInfo] = {}
    for cls in [SOURCES[DEFAULT_SOURCE], *SOURCES.values()]:
        for name, f in cls.Settings.model_fields.items():
            audio.setdefault(name, f)
    return {"agent": AgentSection.model_fields, "model": ModelSection.model_fields,
            "audio": audio, "decision": DecisionSection.model_fields,
            **{t: model.model_fields for t, model in sink_tables().items()}}


def _merged(model: type[_Section], name: str, top: dict, own: dict, source: str, where: str):
    """A machine's section: its own keys over the top-level ones, validated; an error
    names the machine entry and the key."""
    try:
        return model(**{**top, **own})
    except ValidationError as exc:
        raise ConfigError(_explain(exc, f"{source}: {where}", prefix=name)) from None


def _merged_audio(top: dict, own: dict, source: str, where: str):
    """A machine's ``[audio]``: its keys over the top-level ones; a machine that names
    another source keeps only the top-level keys that source has (a file machine beside
    microphone ones does not inherit ``device``)."""
    new = own.get("source", top.get("source", DEFAULT_SOURCE))
    if isinstance(new, str) and new != top.get("source", DEFAULT_SOURCE) and new in SOURCES:
        top = {k: v for k, v in top.items() if k in SOURCES[new].Settings.model_fields}
    try:
        return _built()[1].validate_python({"source": DEFAULT_SOURCE, **top, **own})
    except ValidationError as exc:
        raise ConfigError(_explain(exc, f"{source}: {where}", prefix="audio")) from None


def _expected(names: list[str]) -> str:
    """'a', 'b' or 'c', as pydantic lists the values of a Literal."""
    quoted = [repr(n) for n in names]
    return quoted[0] if len(quoted) == 1 else f"{', '.join(quoted[:-1])} or {quoted[-1]}"


def _explain(exc: ValidationError, source: str, prefix: str = "") -> str:
    lines = []
    for err in exc.errors():
        parts = ((prefix,) if prefix else ()) + tuple(err["loc"])
        got = err.get("input")
        msg = err["msg"].removeprefix("Value error, ")
        tag = ""
        if parts[:1] == ("audio",):
            if err["type"] == "union_tag_invalid":       # an audio.source nobody registered
                parts = ("audio", "source")
                got = got.get("source") if isinstance(got, dict) else err["ctx"]["tag"]
                msg = f"Input should be {_expected(list(SOURCES))}"
            elif len(parts) > 1 and parts[1] in SOURCES:  # pydantic puts the tag in the path
                tag, parts = parts[1], parts[:1] + parts[2:]
        key = ""
        for part in parts:
            key += f"[{part}]" if isinstance(part, int) else f".{part}" if key else str(part)
        if err["type"] == "extra_forbidden":
            lines.append(f"{source}: unknown key '{key}'"
                         + (f" (not a key of audio.source = {tag!r})" if tag else ""))
        elif err["type"] == "missing":
            lines.append(f"{source}: key '{key}' is required")
        elif key.split(".")[-1] in SECRET_KEYS or \
                (isinstance(got, dict) and any(k in got for k in SECRET_KEYS)):
            lines.append(f"{source}: key '{key}' (value not shown): {msg}")
        else:
            lines.append(f"{source}: key '{key}' = {_shown(got)}: {msg}"
                         if key else f"{source}: {msg}")
    return "\n".join(lines)


def _shown(value: Any) -> str:
    """A refused value as an error line echoes it: a table or list by its size, anything
    else cut to ``SHOWN`` characters (a megabyte string or a 5000-digit number stays one
    readable line)."""
    if isinstance(value, (dict, list)):
        kind = "a table" if isinstance(value, dict) else "a list"
        return f"{kind} of {len(value)} item{'s' * (len(value) != 1)}" if len(value) > 3 \
            else _cut(repr(value))
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) > 10 ** SHOWN:
        return f"a number of more than {SHOWN} digits"
    return _cut(repr(value))


def _cut(text: str) -> str:
    return text if len(text) <= SHOWN else f"{text[:SHOWN]}... ({len(text)} characters)"


def _values_from_files(data: dict, source: str) -> dict:
    """``KEY_file = "path"`` sets the text value KEY from that file's contents (first line),
    so that secrets and provisioned ids need not sit in the config."""
    base = Path(source).parent if source != "<config>" else Path(".")
    tables = table_fields()
    out = {}
    for name, section in data.items():
        fields = tables.get(name)
        if fields is None or not isinstance(section, dict):
            out[name] = section
            continue
        section = dict(section)
        for key in [k for k in section if k.endswith("_file") and k[:-5] in fields]:
            field = key[:-5]
            if field in section:
                raise ConfigError(f"{source}: give '{name}.{field}' or '{name}.{key}', not both")
            path = Path(str(section.pop(key))).expanduser()
            path = path if path.is_absolute() else base / path
            if field in SECRET_KEYS:
                warn_if_others_can_read(path, f"'{name}.{key}'")
            try:
                section[field] = first_line(path)
            except ValueError as exc:
                raise ConfigError(f"{source}: key '{name}.{key}': cannot read a value from "
                                  f"{path} ({exc})") from None
        out[name] = section
    return out


def _import_plugins(data: dict, source: str) -> None:
    """Import the modules ``agent.plugins`` names (their sources and sinks register
    themselves), before the config model is assembled; a value that is not a list of
    names is left for validation to refuse."""
    agent = data.get("agent")
    names = agent.get("plugins") if isinstance(agent, dict) else None
    if not isinstance(names, list):
        return
    # a name that is no module name is refused by the field's pattern, never imported
    for i, name in [(i, n) for i, n in enumerate(names)
                    if isinstance(n, str) and _PLUGIN_NAME.fullmatch(n)]:
        where = f"{source}: key 'agent.plugins[{i}]' = {name!r}"
        try:
            importlib.import_module(name)
        except ImportError as exc:
            raise ConfigError(f"{where}: cannot import it ({exc})") from None
        except Exception as exc:      # noqa: BLE001 - a plugin is the user's code
            # whatever the plugin's import raises (its own bug, a SyntaxError, a source or
            # sink its registration refuses) is the config's problem to name, in one line
            raise ConfigError(f"{where}: importing it failed: {type(exc).__name__}: "
                              f"{exc}") from None
        try:
            config_model()            # the tables its sources and sinks add, checked now
        except TypeError as exc:
            raise ConfigError(f"{where}: {exc}") from None


def parse_config(data: dict, source: str = "<config>") -> Config:
    _import_plugins(data, source)
    data = _values_from_files(data, source)
    try:
        config = config_model()(**data, source_file=source)
    except ValidationError as exc:
        raise ConfigError(_explain(exc, source)) from None
    except TypeError as exc:
        raise ConfigError(f"{source}: {exc}") from None
    config.machine_configs()          # every machine's merged tables checked at load
    return config


def load_config(path: str | Path) -> Config:
    """The config file at ``path``, checked. Only a regular file of at most
    ``MAX_CONFIG_BYTES`` is read: a FIFO would block the agent before it says anything,
    and ``-`` is no way to give a config (stdin may be the audio)."""
    path = Path(path)
    # the path as given, or escaped where it holds control characters (a terminal shows
    # the error); a path of 100,000 characters is cut like any echoed value
    shown = str(path) if str(path).isprintable() else repr(str(path))
    shown = shown if len(shown) <= 300 else f"{shown[:300]}... ({len(shown)} characters)"
    try:
        if str(path) == "-":
            raise ConfigError("-: a config is read from a file, not from stdin (which can be "
                              "the audio, audio.source = 'stdin'): give its path")
        info = path.stat()
        if not stat.S_ISREG(info.st_mode):
            what = "a folder" if stat.S_ISDIR(info.st_mode) else "not a regular file"
            raise ConfigError(f"{shown}: cannot read a config from it ({what})")
        if info.st_size > MAX_CONFIG_BYTES:
            raise ConfigError(f"{shown}: {info.st_size} bytes, a config is at most "
                              f"{MAX_CONFIG_BYTES} bytes")
        # UTF-8 whatever the locale (a Pi's C locale); a byte-order mark, which Windows
        # editors write, is no part of the TOML
        data = tomllib.loads(path.read_text(encoding="utf-8-sig"))
    except ConfigError:
        raise
    except OSError as exc:
        raise ConfigError(f"{shown}: cannot read ({exc.strerror or exc})") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{shown}: not a TOML text file (not UTF-8)") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{shown}: not valid TOML ({exc})") from None
    except RecursionError:
        raise ConfigError(f"{shown}: not valid TOML (arrays or tables nested too deep)") from None
    except ValueError as exc:          # an integer of more than 4300 digits, say
        raise ConfigError(f"{shown}: not valid TOML ({_cut(str(exc))})") from None
    if "source_file" in data:
        raise ConfigError(f"{path}: unknown key 'source_file'")
    return parse_config(data, str(path))

