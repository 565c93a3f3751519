"""The agent's TOML configuration, validated on load (pydantic): an error names the file,
the key, the bad value and what is allowed; unknown keys are errors. Relative paths are
relative to the config file. A calibration override (``harken calibrate``) replaces the
bundle's threshold without touching the bundle."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from harken.agent.decision.override import read_override  # noqa: F401 (re-exported)
from harken.common.errors import ConfigError

__all__ = ["Config", "ConfigError", "load_config", "parse_config"]

try:
    import tomllib
except ModuleNotFoundError:           # Python 3.10
    import tomli as tomllib           # type: ignore[no-redef]


class _Section(BaseModel):
    # nan/inf are valid TOML floats, but no threshold or duration of the agent can be one
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


SECRET_KEYS = ("password",)       # their values are never echoed in an error
log = logging.getLogger("harken")


class AgentSection(_Section):
    node: str = Field("harken-node", min_length=1, pattern=r"^[A-Za-z0-9_.-]+$")
    machine: str = Field("machine", min_length=1, pattern=r"^[A-Za-z0-9_.-]+$")
    section: int = Field(0, ge=0, le=99)
    state_dir: str = "state"          # calibration override, counters


class ModelSection(_Section):
    bundle: str
    artifact: Literal["tflite-int8", "onnx-int8", "onnx-fp32", "tflite-fp32"] | None = None
    threads: int = Field(1, ge=1, le=64)


class AudioSection(_Section):
    source: Literal["mic", "file", "stdin"] = "mic"
    device: str | int | None = None   # PortAudio input: index or (part of) its name
    file: str | None = None
    realtime: bool = True             # file source paced like a microphone
    loop: bool = False                # file source restarts at the end (demos)
    pcm_format: Literal["s16le", "s32le", "f32le"] = "s16le"
    channels: int = Field(1, ge=1, le=32)
    # 1-based input channel this machine listens to; None: the input's mono view (a
    # microphone's first channel, the mix of a file's or stdin's channels)
    channel: int | None = Field(None, ge=1, le=64)
    block_s: float = Field(0.1, gt=0, le=2)
    ring_s: float = Field(30.0, ge=1, le=600)
    reopen_s: float = Field(5.0, gt=0, le=3600)     # retry a lost microphone this often

    @model_validator(mode="after")
    def _file_needs_path(self):
        if self.source == "file" and not self.file:
            raise ValueError("audio.source = 'file' needs audio.file")
        if self.source == "stdin" and self.channel is not None and self.channel > self.channels:
            raise ValueError(f"audio.channel = {self.channel}, but stdin carries "
                             f"audio.channels = {self.channels}")
        return self

    def input_key(self) -> tuple:
        """The input's identity without the channel: machines whose audio has the same key
        share one stream (one PortAudio stream, one file read), each taking its channel."""
        return tuple(sorted(self.model_dump(exclude={"channel"}).items(), key=str))


class DecisionSection(_Section):
    interval_s: float = Field(10.0, ge=0.5, le=600)
    k_on: int = Field(2, ge=1, le=100)
    n: int = Field(3, ge=1, le=100)
    n_off: int = Field(3, ge=1, le=100)
    threshold: float | None = None    # overrides bundle and calibration when set

    @model_validator(mode="after")
    def _k_within_n(self):
        if self.k_on > self.n:
            raise ValueError(f"decision.k_on ({self.k_on}) cannot exceed decision.n ({self.n})")
        return self


class OutputSection(_Section):
    stdout: bool = True
    file: str | None = None           # also append JSON lines here
    stats_s: float = Field(60.0, ge=1, le=3600)   # health record every this many seconds


class MqttSection(_Section):
    enabled: bool = False
    host: str = "localhost"
    port: int = Field(1883, ge=1, le=65535)
    prefix: str = Field("harken", min_length=1, pattern=r"^[A-Za-z0-9_./-]+$")
    client_id: str = ""               # default harken-<node>-<machine>: stable across restarts
    keepalive: int = Field(30, ge=5, le=3600)
    username: str | None = None
    password: str | None = Field(None, repr=False)   # or password_file = "..." (see above)
    password_env: str | None = None   # or the name of an environment variable
    tls: bool = False
    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    tls_insecure: bool = False        # certificate verification off: logged as a warning
    outbox: str = "outbox.db"         # in agent.state_dir
    outbox_max: int = Field(100_000, ge=10)
    profile: Literal["json", "sparkplug-b", "both"] = "json"   # docs/mqtt.md
    group_id: str = Field("harken", min_length=1, pattern=r"^[^/+#]+$")   # Sparkplug group
    edge_node_id: str | None = Field(None, min_length=1, pattern=r"^[^/+#]+$")  # agent.node
    homeassistant: bool = False       # publish Home Assistant device discovery
    discovery_prefix: str = Field("homeassistant", min_length=1,
                                  pattern=r"^[A-Za-z0-9_./-]+$")

    @model_validator(mode="after")
    def _password_needs_username(self):
        if (self.password is not None or self.password_env) and not self.username:
            raise ValueError("a password (mqtt.password, password_file or password_env) "
                             "needs mqtt.username")
        return self

    def resolved_password(self) -> str | None:
        return resolve_password(self.password, None, self.password_env, "mqtt.password_env")


class MachineEntry(_Section):
    """One ``[[machines]]`` entry: a machine this device watches. Its ``model``, ``audio``
    and ``decision`` tables override the top-level ones key by key, so what all machines
    share is written once."""
    name: str = Field(min_length=1, pattern=r"^[A-Za-z0-9_.-]+$")
    section: int | None = Field(None, ge=0, le=99)       # default: agent.section
    channel: int | None = Field(None, ge=1, le=64)       # shorthand for audio.channel
    model: dict[str, Any] = {}
    audio: dict[str, Any] = {}
    decision: dict[str, Any] = {}


class Config(_Section):
    agent: AgentSection = AgentSection()
    model: ModelSection | None = None      # required, unless every machine names its bundle
    audio: AudioSection = AudioSection()
    decision: DecisionSection = DecisionSection()
    output: OutputSection = OutputSection()
    mqtt: MqttSection = MqttSection()
    machines: list[MachineEntry] = []
    source_file: str = ""

    @model_validator(mode="after")
    def _one_way_to_name_machines(self):
        if self.machines and "machine" in self.agent.model_fields_set:
            raise ValueError("give agent.machine (one machine) or [[machines]] entries, "
                             "not both")
        names = [m.name for m in self.machines]
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            raise ValueError(f"machine names must differ (topics and state files are "
                             f"named after them): {twice} given more than once")
        return self

    @property
    def multi(self) -> bool:
        return bool(self.machines)

    def machine_configs(self) -> list[Config]:
        """One single-machine config per watched machine: this config itself without
        ``[[machines]]``, else one view per entry (its tables merged over the top-level
        ones; MQTT client id and outbox file made per machine)."""
        if not self.machines:
            if self.model is None:
                raise ConfigError(f"{self.source_file}: key 'model.bundle' is required")
            return [self]
        return [self._machine_view(i, m) for i, m in enumerate(self.machines)]

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
        parts = {"model": _merged(ModelSection, top_model, m.model, self.source_file, where),
                 "audio": _merged(AudioSection, self.audio.model_dump(exclude_unset=True),
                                  audio, self.source_file, where),
                 "decision": _merged(DecisionSection,
                                     self.decision.model_dump(exclude_unset=True),
                                     m.decision, self.source_file, where)}
        section = self.agent.section if m.section is None else m.section
        mqtt = self.mqtt
        outbox = Path(mqtt.outbox)
        mqtt = mqtt.model_copy(update={
            "outbox": str(outbox.with_name(f"{outbox.stem}-{m.name}{outbox.suffix}")),
            "client_id": f"{mqtt.client_id}-{m.name}" if mqtt.client_id else ""})
        return self.model_copy(update={
            **parts, "mqtt": mqtt, "machines": [],
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


def _merged(model: type[_Section], top: dict, own: dict, source: str, where: str):
    """A machine's section: its own keys over the top-level ones, validated; an error
    names the machine entry and the key."""
    name = next(k for k, v in SECTIONS.items() if v is model)
    try:
        return model(**{**top, **own})
    except ValidationError as exc:
        raise ConfigError(_explain(exc, f"{source}: {where}", prefix=name)) from None
    except TypeError as exc:
        raise ConfigError(f"{source}: {where}: [machines.{name}]: {exc}") from None


def _explain(exc: ValidationError, source: str, prefix: str = "") -> str:
    lines = []
    for err in exc.errors():
        key = ""
        for part in ((prefix,) if prefix else ()) + tuple(err["loc"]):
            key += f"[{part}]" if isinstance(part, int) else f".{part}" if key else str(part)
        if err["type"] == "extra_forbidden":
            lines.append(f"{source}: unknown key '{key}'")
        elif err["type"] == "missing":
            lines.append(f"{source}: key '{key}' is required")
        elif key.split(".")[-1] in SECRET_KEYS:
            lines.append(f"{source}: key '{key}' (value not shown): {err['msg']}")
        else:
            got = err.get("input")
            lines.append(f"{source}: key '{key}' = {got!r}: {err['msg']}"
                         if key else f"{source}: {err['msg']}")
    return "\n".join(lines)


SECTIONS = {"agent": AgentSection, "model": ModelSection, "audio": AudioSection,
            "decision": DecisionSection, "output": OutputSection, "mqtt": MqttSection}


def resolve_password(value: str | None, file: str | Path | None, env: str | None,
                     env_key: str, file_key: str = "password_file") -> str | None:
    """The one way a password is found, for the agent's config and ``harken watch``: the
    value itself, else the first line of ``file`` (warned about if others can read it),
    else the environment variable ``env``; None when none is given."""
    if value is not None:
        return value
    if file is not None:
        path = Path(file).expanduser()
        warn_if_others_can_read(path, file_key)
        try:
            return first_line(path)
        except ValueError as exc:
            raise ConfigError(f"{file_key} {path}: cannot read a password ({exc})") from None
    if env:
        found = os.environ.get(env)
        if found is None:
            raise ConfigError(f"{env_key}: environment variable {env} is not set")
        return found
    return None


def first_line(path: Path) -> str:
    """A file's first line, stripped (how secrets and provisioned ids are handed over);
    ValueError saying why when there is none."""
    try:
        return Path(path).read_text().splitlines()[0].strip()
    except OSError as exc:
        raise ValueError(exc.strerror or str(exc)) from None
    except IndexError:
        raise ValueError("empty file") from None
    except UnicodeDecodeError:
        raise ValueError("not UTF-8 text") from None


def warn_if_others_can_read(path: Path, what: str) -> None:
    """A secret in a file that other users can read is accepted with one warning, as ssh
    warns of keys (and refuses them; the agent only warns, a running plant matters more)."""
    try:
        mode = path.stat().st_mode
    except OSError:
        return
    if mode & 0o077:
        log.warning(f"WARNING: {what} {path} can be read by other users (mode "
                    f"{mode & 0o777:o}); chmod 600 it")


def _values_from_files(data: dict, source: str) -> dict:
    """``KEY_file = "path"`` sets the text value KEY from that file's contents (first line),
    so that secrets and provisioned ids need not sit in the config."""
    base = Path(source).parent if source != "<config>" else Path(".")
    out = {}
    for name, section in data.items():
        model = SECTIONS.get(name)
        if model is None or not isinstance(section, dict):
            out[name] = section
            continue
        section = dict(section)
        for key in [k for k in section if k.endswith("_file") and k[:-5] in model.model_fields]:
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


def parse_config(data: dict, source: str = "<config>") -> Config:
    data = _values_from_files(data, source)
    try:
        config = Config(**data, source_file=source)
    except ValidationError as exc:
        raise ConfigError(_explain(exc, source)) from None
    except TypeError as exc:
        raise ConfigError(f"{source}: {exc}") from None
    config.machine_configs()          # every machine's merged tables checked at load
    return config


def load_config(path: str | Path) -> Config:
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text())
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read ({exc.strerror or exc})") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not a TOML text file (not UTF-8)") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML ({exc})") from None
    if "source_file" in data:
        raise ConfigError(f"{path}: unknown key 'source_file'")
    return parse_config(data, str(path))

