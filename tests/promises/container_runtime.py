"""A stand-in for the Docker daemon that the BraTS orchestrator talks to: ``containers.run(...)`` starts the
image's entry point (``python /opt/brasyn/entrypoint.py``) from this checkout in a subprocess, with exactly
the binds, environment, working directory, user and network the caller asked for, and the image's own
configuration (its ENV and WORKDIR, read from the Dockerfile) where the caller left them out."""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
IMAGE_ROOT = "/opt/brasyn"
"""Where the image keeps the checkout's files (its WORKDIR); mapped back to this checkout."""


def dockerfile_config(dockerfile: Path = ROOT / "Dockerfile") -> tuple[dict[str, str], str]:
    """The ENV and the last WORKDIR of the final stage, as ``docker image inspect`` would report them
    (``${PATH}`` in a value is left to the host's PATH: the image's venv does not exist here)."""
    env: dict[str, str] = {}
    workdir = "/"
    statements, current = [], ""
    for line in dockerfile.read_text().splitlines():
        text = line.strip()
        if not text or text.startswith("#"):
            continue
        if text.endswith("\\"):
            current += text[:-1] + " "
            continue
        statements.append(current + text)
        current = ""
    for statement in statements:
        words = shlex.split(statement)
        if words[:1] == ["ENV"]:
            env.update(item.split("=", 1) for item in words[1:] if "=" in item)
        elif words[:1] == ["WORKDIR"]:
            workdir = words[1]
    return env, workdir


@dataclass
class Run:
    """One ``containers.run`` call: what was asked and what the container saw and left."""

    kwargs: dict[str, Any]
    argv: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    cwd: str = ""
    input_listing: list[str] = field(default_factory=list)
    output_listing: list[str] = field(default_factory=list)
    returncode: int | None = None


class FakeContainer:
    def __init__(self, run: Run, output: bytes) -> None:
        self._run = run
        self._output = output

    def attach(self, stdout: bool = True, stderr: bool = True, stream: bool = True, logs: bool = True):
        return iter(self._output.splitlines(keepends=True))

    def wait(self) -> dict[str, int]:
        return {"StatusCode": self._run.returncode}


class FakeImages:
    def __init__(self, runtime: FakeRuntime) -> None:
        self._runtime = runtime

    def list(self, name: str | None = None) -> list[str]:
        # the image is "present": nothing is pulled
        return [name] if name == self._runtime.image else []


class FakeApi:
    def pull(self, *args: Any, **kwargs: Any):
        raise AssertionError("the stand-in runtime pulls nothing: the image name does not match")


class FakeContainers:
    def __init__(self, runtime: FakeRuntime) -> None:
        self._runtime = runtime

    def run(self, **kwargs: Any) -> FakeContainer:
        return self._runtime.start(kwargs)


class FakeRuntime:
    """The client object (``docker.from_env()``'s result) the orchestrator uses.

    ``image_env`` is the ENV a test image adds on top of the Dockerfile's (as a ``FROM brasyn`` image with
    its own ENV lines would); the container's ``/tmp`` is a private host folder ``tmp``."""

    def __init__(self, image: str, tmp: Path, image_env: dict[str, str] | None = None) -> None:
        self.image = image
        self.tmp = tmp
        self.image_env, self.workdir = dockerfile_config()
        self.image_env.update(image_env or {})
        self.runs: list[Run] = []
        self.warnings: list[str] = []  # what the caller's log warned of, where a test collects it
        self.containers = FakeContainers(self)
        self.images = FakeImages(self)
        self.api = FakeApi()

    def _host(self, path: str, binds: dict[str, str]) -> str:
        """The host path behind a container path: a bind, the image's tree (this checkout) or /tmp."""
        for container, host in sorted(binds.items(), key=lambda item: -len(item[0])):
            if path == container or path.startswith(container + "/"):
                return host + path[len(container) :]
        if path == IMAGE_ROOT or path.startswith(IMAGE_ROOT + "/"):
            return str(ROOT) + path[len(IMAGE_ROOT) :]
        if path == "/tmp" or path.startswith("/tmp/"):
            return str(self.tmp) + path[len("/tmp") :]
        return path

    def _user_prefix(self, user: str | None) -> list[str]:
        if not user or user == f"{os.getuid()}:{os.getgid()}":
            return []
        uid, _, gid = user.partition(":")
        if os.geteuid() != 0 or shutil.which("setpriv") is None:
            raise AssertionError(f"cannot run as {user} here (not root, or no setpriv)")
        return ["setpriv", f"--reuid={uid}", f"--regid={gid or uid}", "--clear-groups"]

    def _network_prefix(self, network_mode: str | None) -> list[str]:
        if network_mode != "none":
            return []
        # no network where a network namespace can be made; elsewhere the run is only recorded as asked
        if (
            shutil.which("unshare")
            and subprocess.run(["unshare", "--net", "true"], check=False).returncode == 0
        ):
            return ["unshare", "--net"]
        return []

    def start(self, kwargs: dict[str, Any]) -> FakeContainer:
        assert kwargs.get("image") == self.image, kwargs.get("image")
        run = Run(kwargs=kwargs)
        binds = {spec["bind"]: str(host) for host, spec in (kwargs.get("volumes") or {}).items()}
        env = {
            key: self._host(value, binds) if value.startswith("/") else value
            for key, value in self.image_env.items()
        }
        env.update(kwargs.get("environment") or {})
        env["PATH"] = os.environ.get("PATH", "/usr/bin:/bin")
        # the image's entry point reads /input and /output; here they are the host folders bound there
        env["BRASYN_INPUT"] = self._host("/input", binds)
        env["BRASYN_OUTPUT"] = self._host("/output", binds)
        self.tmp.mkdir(parents=True, exist_ok=True)
        run.cwd = self._host(kwargs.get("working_dir") or self.workdir, binds)
        command = kwargs.get("command") or []
        run.argv = [
            sys.executable,
            self._host(f"{IMAGE_ROOT}/entrypoint.py", binds),
            *(shlex.split(command) if isinstance(command, str) else command),
        ]
        run.env = env
        run.input_listing = sorted(
            str(p.relative_to(env["BRASYN_INPUT"])) for p in Path(env["BRASYN_INPUT"]).rglob("*")
        )
        proc = subprocess.run(
            [
                *self._network_prefix(kwargs.get("network_mode")),
                *self._user_prefix(kwargs.get("user")),
                *run.argv,
            ],
            env=env,
            cwd=run.cwd,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            timeout=900,
            check=False,
        )
        run.returncode = proc.returncode
        run.output_listing = sorted(p.name for p in Path(env["BRASYN_OUTPUT"]).iterdir())
        self.runs.append(run)
        return FakeContainer(run, proc.stdout)
