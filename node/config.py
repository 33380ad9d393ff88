"""busi-node's settings: one frozen dataclass, from a TOML file and/or the command line."""

from __future__ import annotations

import re
from dataclasses import dataclass, fields, replace
from pathlib import Path

from busi.runtime.errors import UsageError

AE_TITLE = re.compile(r"^[\x20-\x5b\x5d-\x7e]{1,16}$")  # 16 printable characters, no backslash


@dataclass(frozen=True)
class Destination:
    ae: str
    host: str
    port: int

    @classmethod
    def parse(cls, text: str) -> "Destination":
        """'PACS@host:4242'."""
        m = re.fullmatch(r"([^@]+)@([^:@]+):(\d+)", str(text).strip())
        if not m:
            raise UsageError(f"--dest {text!r}: expected AE@host:port, e.g. ORTHANC@127.0.0.1:4242")
        return cls(check_ae(m.group(1), "--dest"), m.group(2), check_port(int(m.group(3)), "--dest"))


def check_ae(value: str, what: str) -> str:
    if not AE_TITLE.match(str(value)) or not str(value).strip():
        raise UsageError(f"{what}: {value!r} is not an AE title (1-16 printable characters, no backslash)")
    return str(value)


def check_port(value: int, what: str) -> int:
    if not 1 <= int(value) <= 65535:
        raise UsageError(f"{what}: port {value} outside 1-65535")
    return int(value)


@dataclass(frozen=True)
class NodeConfig:
    model: Path | None
    spool: Path
    dest: Destination | None = None
    ae: str = "BUSI"
    host: str = "0.0.0.0"
    port: int = 11112
    #: calling AE titles allowed to associate (empty: any); host addresses likewise
    allow: tuple[str, ...] = ()
    allow_hosts: tuple[str, ...] = ()
    #: refuse associations whose called AE title is not `ae`
    check_called_ae: bool = True
    #: auto (the segmenter beside the model) when there is one, else none
    mask: str | None = None
    segmenter: Path | None = None
    #: images waiting for the classifier before a C-STORE is answered "out of resources"
    queue: int = 256
    max_pixels: int = 50_000_000
    max_bytes: int = 1 << 30
    #: seconds between delivery attempts, doubling up to retry_max
    retry: float = 2.0
    retry_max: float = 60.0
    #: a result the destination refuses this many times with a transient status (0xAxxx, ...)
    #: is set aside in failed/results; 0xCxxx sets it aside at once
    send_tries: int = 5
    threads: int | None = None
    #: the worker classifies what waits in the spool in batches of at most this many images
    #: (one model run each), and waits at most batch_delay seconds for a burst to fill one
    batch_size: int = 8
    batch_delay: float = 0.02
    #: a study with no new instance for this many seconds gets a study summary SR (0: none)
    study_idle: float = 30.0
    tls_cert: Path | None = None
    tls_key: Path | None = None
    tls_ca: Path | None = None
    #: the remote backend: the classifier (and segmenter) on this v2 inference server
    #: (busi-serve, Triton), with a bearer token and the sha256 the served model must have
    server: str | None = None
    token: str | None = None
    expect_sha256: str | None = None

    @classmethod
    def from_sources(cls, toml_path: Path | None, **given) -> "NodeConfig":
        """The TOML file's values, overridden by those given on the command line (None: not given)."""
        values: dict = {}
        if toml_path is not None:
            import tomllib

            try:
                values = tomllib.loads(Path(toml_path).read_text())
            except (OSError, UnicodeDecodeError) as e:
                raise UsageError(f"{toml_path}: cannot read ({e})") from None
            except tomllib.TOMLDecodeError as e:
                raise UsageError(f"{toml_path}: not valid TOML ({e})") from None
            known = {f.name for f in fields(cls)}
            unknown = sorted(set(values) - known)
            if unknown:
                raise UsageError(f"{toml_path}: unknown setting(s) {', '.join(unknown)} (known: {', '.join(sorted(known))})")
        values.update({k: v for k, v in given.items() if v is not None and v != ()})
        if not values.get("spool"):
            raise UsageError("busi-node needs --spool (or 'spool' in the config file)")
        if bool(values.get("model")) == bool(values.get("server")):
            raise UsageError("busi-node needs either --model or --server (or 'model' / 'server' in the config file)")
        dest = values.get("dest")
        cfg = cls(
            model=Path(values["model"]) if values.get("model") else None, spool=Path(values["spool"]),
            dest=Destination.parse(dest) if isinstance(dest, str) else dest,
            **{k: v for k, v in values.items() if k not in ("model", "spool", "dest")},
        )
        return cfg.checked()

    def checked(self) -> "NodeConfig":
        check_ae(self.ae, "--ae")
        check_port(self.port, "--port")
        if int(self.send_tries) < 1:
            raise UsageError(f"--send-tries {self.send_tries}: at least 1")
        if not isinstance(self.batch_size, int) or not 1 <= self.batch_size <= 256:
            raise UsageError(f"--batch-size {self.batch_size!r}: a whole number from 1 to 256")
        if not isinstance(self.batch_delay, (int, float)) or not 0 <= self.batch_delay <= 10:
            raise UsageError(f"--batch-delay {self.batch_delay!r}: seconds from 0 to 10")
        for a in self.allow:
            check_ae(a, "--allow")
        if self.mask not in (None, "auto", "none"):
            raise UsageError(f"--mask {self.mask!r}: busi-node takes auto or none")
        if (self.tls_cert is None) != (self.tls_key is None):
            raise UsageError("TLS needs both --tls-cert and --tls-key")
        return replace(self, allow=tuple(self.allow), allow_hosts=tuple(self.allow_hosts),
                       **{k: Path(v) for k in ("segmenter", "tls_cert", "tls_key", "tls_ca")
                          if (v := getattr(self, k)) is not None})

