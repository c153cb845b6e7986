"""An uploaded ``tokenizer.json`` run in a child process with bounded memory and CPU time.

A tokenizer file is a small program: its regular expressions (a ``Split`` pre-tokenizer, a ``Replace`` normalizer)
run in the Oniguruma engine, which panics (pyo3's ``PanicException``, a BaseException) when one backtracks past its
retry limit and can take exponential time below it; a normalizer can multiply a text's length; padding can add
millions of ids to every row. None of that may reach the worker that validates the dataset, so the tokenizer is
loaded and run only in this module's child: its data segment is capped at ``MEMORY_BYTES`` (RLIMIT_DATA) and each
batch gets a CPU-time limit that grows with the batch's bytes (RLIMIT_CPU: the kernel ends an overrun with SIGXCPU),
the parent waiting at most a multiple of it in wall-clock time. Padding, truncation and the post-processor are
switched off: rows are stored whole and without special tokens, so none of them changes the ids.

The parent sets every limit. The protocol, on binary pipes (little-endian): the child, started with the tokenizer's
path, its memory limit and its CPU seconds for loading, first answers ``V`` with the vocabulary size or ``R`` with a
refusal. Each request is ``<n texts: u64><CPU seconds: u64><n byte lengths: u64 each><the texts' UTF-8 end to end>``;
the child answers ``T`` with n token counts (i64) and then every id (i32) end to end, or ``R`` with the reason it
failed, and exits.
"""

from __future__ import annotations

import math
import os
import resource
import select
import signal
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import BinaryIO

import numpy as np

ROOT = Path(__file__).resolve().parents[3]
MEMORY_BYTES = 1 << 30
LOAD_CPU_S = 60
BATCH_CPU_S = 10  # and CPU_S_PER_MIB for each MiB of text in the batch: a quarter of a MiB a second at the least
CPU_S_PER_MIB = 4
WALL_FACTOR = 20  # the wall-clock wait for an answer, as a multiple of its CPU limit (the machine may be busy)
GROUP_CHARS = 256 * 1024  # texts encoded at once in the child, so its Encoding objects stay small
REQUEST = struct.Struct("<QQ")
REPLY = struct.Struct("<cQ")


class TokenizerFailed(Exception):
    """The tokenizer could not encode a batch (it panicked, ran over its memory or time, or its process ended);
    the message says why, the caller says where."""


def batch_cpu_s(text_bytes: int) -> int:
    return BATCH_CPU_S + math.ceil(CPU_S_PER_MIB * text_bytes / (1 << 20))


class TokenizerProcess:
    """The parent's side: ``vocab_size`` once loaded, ``encode`` a batch, ``close``."""

    def __init__(self, path: Path):
        self._stderr = tempfile.TemporaryFile()  # noqa: SIM115 (closed by close)
        env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
            "TOKENIZERS_PARALLELISM": "true",  # its threads count against the same memory and CPU-time limits
            "RUST_BACKTRACE": "0",
        }
        self._proc: subprocess.Popen | None = subprocess.Popen(
            [sys.executable, "-m", __name__, str(path), str(MEMORY_BYTES), str(LOAD_CPU_S)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._stderr,
            env=env,
            cwd=ROOT,
        )
        self._cpu_s, self._memory_bytes = LOAD_CPU_S, MEMORY_BYTES
        _, self.vocab_size = self._reply(time.monotonic() + WALL_FACTOR * LOAD_CPU_S)

    def encode(self, texts: list[str], max_tokens: int) -> tuple[np.ndarray, np.ndarray] | None:
        """(every text's ids end to end, each text's token count), or None when they would be more than
        ``max_tokens`` ids (the child is then stopped: nothing more is encoded)."""
        assert self._proc is not None and self._proc.stdin is not None
        raw = [t.encode("utf-8") for t in texts]
        lengths = np.fromiter(map(len, raw), dtype="<u8", count=len(raw))
        blob = b"".join(raw)
        self._cpu_s = batch_cpu_s(len(blob))
        deadline = time.monotonic() + WALL_FACTOR * self._cpu_s
        try:
            self._proc.stdin.write(REQUEST.pack(len(raw), self._cpu_s) + lengths.tobytes() + blob)
            self._proc.stdin.flush()
        except BrokenPipeError:
            raise self._ended() from None
        _, n = self._reply(deadline)
        counts = np.frombuffer(self._read(8 * n, deadline), dtype="<i8")
        total = int(counts.sum())
        if total > max_tokens:
            self.close()
            return None
        return np.frombuffer(self._read(4 * total, deadline), dtype="<i4"), counts

    def close(self) -> None:
        if self._proc is not None:
            self._proc.kill()
            self._proc.wait()
            for pipe in (self._proc.stdin, self._proc.stdout):
                if pipe is not None:
                    pipe.close()
            self._proc = None
        self._stderr.close()

    def _reply(self, deadline: float) -> tuple[bytes, int]:
        kind, n = REPLY.unpack(self._read(REPLY.size, deadline))
        if kind == b"R":
            reason = self._read(n, deadline).decode("utf-8", "replace")
            self.close()
            raise TokenizerFailed(reason)
        return kind, n

    def _read(self, n: int, deadline: float) -> bytes:
        assert self._proc is not None and self._proc.stdout is not None
        fd, buf = self._proc.stdout.fileno(), bytearray()
        while len(buf) < n:
            ready, _, _ = select.select([fd], [], [], max(0.0, deadline - time.monotonic()))
            if not ready:
                self.close()
                raise TokenizerFailed(f"gave no answer within {WALL_FACTOR * self._cpu_s} s")
            block = os.read(fd, min(n - len(buf), 1 << 20))
            if not block:
                raise self._ended()
            buf += block
        return bytes(buf)

    def _ended(self) -> TokenizerFailed:
        """Why the child ended without answering (from its exit status and the last line it wrote)."""
        assert self._proc is not None
        try:
            code = self._proc.wait(timeout=10)
        except subprocess.TimeoutExpired:  # it closed its output but lingers
            self._proc.kill()
            code = self._proc.wait()
        self._stderr.seek(0, os.SEEK_END)
        self._stderr.seek(max(0, self._stderr.tell() - 4096))
        said = [ln for ln in self._stderr.read().decode("utf-8", "replace").splitlines() if _telling(ln)]
        last = said[-1][:300] if said else ""
        self.close()
        if code == -signal.SIGXCPU:
            return TokenizerFailed(f"took more than {self._cpu_s} s of CPU time")
        if any("memory allocation of" in ln or "MemoryError" in ln for ln in said):
            return TokenizerFailed(f"needed more than {self._memory_bytes} bytes of memory")
        how = f"signal {signal.Signals(-code).name}" if code < 0 else f"exit status {code}"
        return TokenizerFailed(f"its process ended ({how}{': ' + last if last else ''})")


def _telling(line: str) -> bool:
    """A line of the child's stderr that says something (not Rust's hint about backtraces)."""
    return bool(line.strip()) and not line.startswith("note: run with `RUST_BACKTRACE")


# --- the child ------------------------------------------------------------------------------------------------------


def _limit_cpu(seconds: int) -> None:
    """SIGXCPU once this process has used ``seconds`` more CPU time than it has so far."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    used = math.ceil(usage.ru_utime + usage.ru_stime)
    resource.setrlimit(resource.RLIMIT_CPU, (used + seconds, resource.RLIM_INFINITY))


def _refuse(out: BinaryIO, reason: str) -> None:
    data = reason.encode("utf-8")
    out.write(REPLY.pack(b"R", len(data)) + data)
    out.flush()


def _load(path: Path):
    from tokenizers import Tokenizer

    try:
        tokenizer = Tokenizer.from_file(str(path))
    except MemoryError:
        raise
    except Exception as exc:  # the library raises a bare Exception for every malformed file
        raise TokenizerFailed(f"not a tokenizer.json the tokenizers library can load ({_first_line(exc)})") from None
    vocab = tokenizer.get_vocab_size(with_added_tokens=True)
    if not 1 <= vocab < 2**31:
        raise TokenizerFailed(f"a vocabulary of {vocab} ids does not fit int32 token ids")
    tokenizer.no_padding()
    tokenizer.no_truncation()
    tokenizer.post_processor = None
    return tokenizer


def _encode(tokenizer, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
    counts, parts = np.zeros(len(texts), dtype="<i8"), []
    start = 0
    while start < len(texts):
        end, chars = start, 0
        while end < len(texts) and (end == start or chars + len(texts[end]) <= GROUP_CHARS):
            chars += len(texts[end])
            end += 1
        for i, encoding in enumerate(tokenizer.encode_batch_fast(texts[start:end], add_special_tokens=False)):
            ids = np.asarray(encoding.ids, dtype="<i4")
            counts[start + i] = len(ids)
            parts.append(ids)
        start = end
    return counts, (np.concatenate(parts) if parts else np.zeros(0, dtype="<i4"))


def _requests(inp: BinaryIO):
    """(texts, CPU seconds) of each request until the parent closes the pipe."""
    while head := inp.read(REQUEST.size):
        n, cpu_s = REQUEST.unpack(head)
        lengths = np.frombuffer(inp.read(8 * n), dtype="<u8")
        blob = inp.read(int(lengths.sum()))
        bounds = [0, *np.cumsum(lengths, dtype=np.int64).tolist()]
        yield [blob[a:b].decode("utf-8") for a, b in zip(bounds[:-1], bounds[1:], strict=True)], cpu_s


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:300] if text else type(exc).__name__


def main(path: Path, memory_bytes: int, load_cpu_s: int) -> None:
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    resource.setrlimit(resource.RLIMIT_DATA, (memory_bytes, memory_bytes))
    _limit_cpu(load_cpu_s)
    out = sys.stdout.buffer
    try:
        tokenizer = _load(path)
        out.write(REPLY.pack(b"V", tokenizer.get_vocab_size(with_added_tokens=True)))
        out.flush()
        for texts, cpu_s in _requests(sys.stdin.buffer):
            _limit_cpu(cpu_s)
            counts, ids = _encode(tokenizer, texts)
            out.write(REPLY.pack(b"T", len(texts)))
            out.write(counts.data)
            out.write(ids.data)
            out.flush()
    except (KeyboardInterrupt, SystemExit):
        raise
    except TokenizerFailed as exc:
        _refuse(out, str(exc))
    except MemoryError:
        _refuse(out, f"needed more than {memory_bytes} bytes of memory")
    except BaseException as exc:  # pyo3's PanicException is a BaseException: the library failed on this text
        _refuse(out, f"the tokenizers library failed ({_first_line(exc)})")


if __name__ == "__main__":
    main(Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]))
