"""Every error wsvk raises on purpose: a problem a user can act on, printed as one line."""

from __future__ import annotations

import re


class WsvkError(RuntimeError):
    """Base class: a problem a user can act on, printed as one line."""


class ConfigError(WsvkError, ValueError):
    """A bad WSVK_* environment value."""


class NoAdapterError(WsvkError):
    """wgpu was asked for but there is no usable adapter."""


class GpuError(WsvkError):
    """The GPU failed at run time (device lost, validation error, out of memory)."""


class InputError(WsvkError, ValueError):
    """A bad user input (text, option, model or audio file): synth.py exits with code 2."""


class NotCachedError(InputError):
    """A Hugging Face file that is neither cached nor downloadable (offline)."""

    def __init__(self, what: str, repo_id: str, filename: str, hint: str, whole_repo: bool = False):
        self.what, self.repo_id, self.filename, self.hint = what, repo_id, filename, hint
        self.command = f"hf download {repo_id}" + ("" if whole_repo else f" {filename}")
        name = repo_id if whole_repo else f"{repo_id}:{filename}"
        super().__init__(f"{what} {name} is not in the Hugging Face cache and the Hub is unreachable: "
                         f"run `{self.command}` on a connected machine, or {hint}")

    @staticmethod
    def combine(errors: list) -> InputError:
        """One line for several missing files (a first run without network misses them all)."""
        if len(errors) == 1:
            return errors[0]
        downloads = "; ".join(f"`{e.command}`" for e in errors)
        names = ", ".join(e.what for e in errors)
        flags = ", ".join(m.group() for m in (re.search(r"--[\w-]+", e.hint) for e in errors) if m)
        return InputError(f"the {names} are not in the Hugging Face cache and the Hub is unreachable: "
                          f"run {downloads} on a connected machine, or pass local paths "
                          f"({flags}), or --random-weights tiny for a noise test")


class JobError(WsvkError):
    """The corpus job's output folder cannot be written (full disk, permissions): the job stops,
    finished rows kept."""


class ApiError(Exception):
    """A request the server refuses: the HTTP status and OpenAI's error fields (message, type,
    param, code)."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None,
                 kind: str = "invalid_request_error", headers: dict | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.kind = status, message, param, code, kind
        self.headers = headers or {}


def first_line(e: BaseException) -> str:
    """The first line of an exception's message, or its repr when the message is empty."""
    text = str(e).strip()
    return text.splitlines()[0] if text else repr(e)


def describe(e: BaseException) -> str:
    """'TypeName: first line of the message' (at most 200 characters of it), for one-line errors."""
    text = str(e).strip()
    return f"{type(e).__name__}: {text.splitlines()[0][:200]}" if text else type(e).__name__
