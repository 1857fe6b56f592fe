"""Evaluation protocols: how many frames go in, how many come out, which of them are scored.

The paper's named protocols (Tables 1, 2 and 4) plus any "S-K" (S frames in, K out, all scored)
or "S-K-lastN" (only the last N scored). Plain Python, no torch, no Ray.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

_CUSTOM = re.compile(r"^(\d+)-(\d+)(?:-last(\d+))?$")


@dataclass(frozen=True)
class Protocol:
    """An evaluation protocol: `short_len` frames in, `out_len` predicted, `frames` scored.

    `frames` are 0-based indices into the out_len future frames (0 = the first predicted frame).
    """

    name: str
    short_len: int
    out_len: int
    frames: tuple[int, ...]
    datasets: tuple[str, ...] = ()

    @property
    def timesteps(self) -> list[int]:
        """1-based future time steps of the scored frames (t = 1 .. out_len), for plotting."""
        return [f + 1 for f in self.frames]

    @classmethod
    def from_dict(cls, d: dict) -> "Protocol":
        """Inverse of ``dataclasses.asdict`` (lists back to tuples), e.g. after JSON."""
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items()})


def _protocol(name: str, short_len: int, out_len: int, first: int = 0, datasets=()) -> Protocol:
    return Protocol(name, short_len, out_len, tuple(range(first, out_len)), tuple(datasets))


PROTOCOLS: dict[str, Protocol] = {
    # Table 1: Moving-MNIST
    "10-10": _protocol("10-10", 10, 10, datasets=("mmnist",)),
    "10-30": _protocol("10-30", 10, 30, datasets=("mmnist",)),
    # Table 2: KTH (10->20, 10->40); Human3.6M 10->40
    "10-20": _protocol("10-20", 10, 20, datasets=("kth",)),
    "10-40": _protocol("10-40", 10, 40, datasets=("kth", "h36m")),
    # Table 4: the last 10 of 40 predicted frames (future frames 31..40, indices 30..39)
    "10-40-last10": _protocol("10-40-last10", 10, 40, first=30, datasets=("kth",)),
}


def get_protocol(name: str | Protocol) -> Protocol:
    """A named protocol ("10-40", also spelled "10->40", "10-40-last10"), any "S-K" or
    "S-K-lastN", or the protocol itself."""
    if isinstance(name, Protocol):
        return name
    key = str(name).replace("->", "-").strip()
    if key in PROTOCOLS:
        return PROTOCOLS[key]
    m = _CUSTOM.match(key)
    if not m:
        raise ValueError(f"unknown protocol {name!r}: use one of {sorted(PROTOCOLS)} or "
                         "'S-K' (S frames in, K out) or 'S-K-lastN' (score the last N)")
    s, k, last = int(m.group(1)), int(m.group(2)), m.group(3)
    if k < 1 or (last is not None and not 1 <= int(last) <= k):
        raise ValueError(f"protocol {name!r}: need K >= 1 and 1 <= N <= K")
    first = k - int(last) if last is not None else 0
    return Protocol(f"{s}-{k}" + (f"-last{last}" if last else ""), s, k, tuple(range(first, k)))


def last_n_protocol(short_len: int, out_len: int, n: int = 10) -> Protocol:
    """Table 4's "last 10 of the future frames" for any horizon ("10-40-last10" for 10->40);
    the whole horizon when it has no more than ``n`` frames."""
    return get_protocol(f"{short_len}-{out_len}-last{min(n, out_len)}")


def protocol_for(short_len: int, test_out_len: int, name: str | None = None) -> Protocol:
    """The one protocol a training run scores: ``name`` (checked against the model's short_len
    and the test windows' ``test_out_len``) or, with ``name=None``, the named protocol that
    predicts exactly ``test_out_len`` frames from ``short_len``, else "S-K" over all of them."""
    if name is None:
        fits = [p for p in PROTOCOLS.values()
                if p.short_len == short_len and p.out_len == test_out_len and p.frames[0] == 0]
        return fits[0] if fits else get_protocol(f"{short_len}-{test_out_len}")
    p = get_protocol(name)
    if p.short_len != short_len:
        raise ValueError(f"protocol {p.name} feeds {p.short_len} frames but the model's short_len "
                         f"is {short_len}")
    if p.out_len > test_out_len:
        raise ValueError(f"protocol {p.name} scores {p.out_len} future frames but the test "
                         f"windows hold only {test_out_len}; prepare the data with "
                         f"--test-out-len {p.out_len} (or more)")
    return p


def default_protocols(short_len: int, dataset: str | None, test_window_len: int) -> list[Protocol]:
    """The paper's protocols for ``dataset`` that test windows of ``test_window_len`` frames
    hold (KTH: 10-20, 10-40, 10-40-last10; Moving-MNIST: 10-10, 10-30), else the data's own S->K."""
    fits = [p for p in PROTOCOLS.values()
            if dataset in p.datasets and p.short_len == short_len
            and p.short_len + p.out_len <= test_window_len]
    return fits or [get_protocol(f"{short_len}-{test_window_len - short_len}")]
