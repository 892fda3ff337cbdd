"""Which simulcast layer one subscriber is sent: the best its own path carries.

A subscriber goes down a layer as soon as its estimate falls below what its layer takes. It
cannot show that its path carries a higher layer while it receives a lower one (the estimate
follows what arrives), so before going up the sender probes: for a quarter of a second it adds
padding up to the higher layer's rate, and reads in the feedback the rate at which the later
half of that burst arrived (a shaper's token bucket passes the first part at once). If it
arrived at that rate the path carries it: up, on trial until the layer holds. If not, or if
the delay starts to grow meanwhile, or the layer does not hold, the next probe waits longer.
A burst costs a capped path a queue of a quarter of a second at most, not a freeze. No I/O:
rates and time are passed in, `now` on the clock of the packets' send times.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

# A layer is taken only if the estimate exceeds its rate by this much, and left once the
# estimate falls below its rate: between the two, a probe's result (0.9 of the headroom) holds.
HEADROOM = 1.15
STAY = 1.0
# A path that cannot be probed (REMB only) reports about what arrives, a little under or over
# the layer's rate as the windows fall: it is left only when the figure falls clearly below
# (a congested REMB receiver reports 0.85 of what arrives), since nothing brings it back up.
FOLLOWING_FLOOR = 0.8
# A probe's burst, and how long its feedback may take before it counts as failed.
BURST_S, JUDGE_S = 0.25, 1.5
ARRIVED_SHARE = 0.9
# After a failed probe the next waits this long, doubling up to the maximum: a path that
# widens again (a capped link released) is found within about seven seconds.
RETRY_S, RETRY_MAX_S = 2.0, 6.0
# After going down, no probe for this long: the path just said no.
CALM_S = 3.0
# A layer a probe took the subscriber to is proven once it holds this long; left sooner (a
# shaper's bucket let the burst through), the probe counts as failed.
HOLD_S = 3.0


class Path(Protocol):
    """What the chooser reads of a subscriber's path: its estimator (`gcc.Estimator`)."""

    @property
    def target(self) -> int:
        """The rate the path is estimated to carry (bits/s)."""

    @property
    def queueing(self) -> bool:
        """Whether the delay is growing: a queue is building."""

    @property
    def probes(self) -> bool:
        """Whether a probe's burst can be measured on this path (else it is never sent)."""

    def delivered(self, start_s: float, end_s: float) -> int | None:
        """The rate at which what was sent between two times arrived, once known."""


@dataclass(frozen=True)
class Choice:
    """What to send a subscriber now: a layer, padding (bits/s) while probing, and, when a
    probe just succeeded, the rate its path was shown to carry."""

    layer: int
    padding: int = 0
    carried: int = 0


@dataclass
class _Probe:
    layer: int
    since: float
    total: int  # what is sent during the burst: the current layer and padding


class LayerChooser:
    """Follows one subscriber's path over a stream's layers (0 the lowest)."""

    def __init__(self, start: int = 0) -> None:
        self.layer = start
        self._probe: _Probe | None = None
        self._next_probe = 0.0
        self._retry = RETRY_S
        self._trial: float | None = None  # when a probe last took it up, until the layer holds

    def choose(self, rates: list[int], path: Path, now: float) -> Choice:
        """Return what to send, given each layer's rate (bits/s, lowest first; 0 for a layer
        not received) and the subscriber's path."""
        live = [i for i, rate in enumerate(rates) if rate > 0]
        if not live:
            return Choice(self.layer)
        if self._probe is not None:
            return self._probing(self._probe, rates, path, now)
        estimate = path.target
        floor = STAY if path.probes else FOLLOWING_FLOOR
        if self.layer not in live or (
            rates[self.layer] * floor > estimate and self.layer > live[0]
        ):
            # Its layer stopped, or the path no longer carries it: down at once, to what fits.
            fits = [i for i in live if rates[i] * HEADROOM <= estimate]
            self.layer = fits[-1] if fits else live[0]
            calm = CALM_S
            if self._trial is not None and now - self._trial < HOLD_S:
                # A probe that said yes and a layer that did not hold: as a failed probe.
                calm = max(calm, self._retry)
                self._retry = min(self._retry * 2, RETRY_MAX_S)
            self._trial = None
            self._next_probe = max(self._next_probe, now + calm)
            return Choice(self.layer)
        if self._trial is not None and now - self._trial >= HOLD_S:
            self._trial, self._retry = None, RETRY_S  # the layer a probe found held
        higher = [i for i in live if i > self.layer]
        if not higher:
            return Choice(self.layer)
        if estimate >= rates[higher[0]] * HEADROOM:
            self.layer = higher[0]  # the estimate already has room for it
            return Choice(self.layer)
        if now < self._next_probe or path.queueing or not path.probes:
            return Choice(self.layer)
        total = int(rates[higher[0]] * HEADROOM)
        self._probe = _Probe(higher[0], now, total)
        return Choice(self.layer, total - rates[self.layer])

    def _probing(self, probe: _Probe, rates: list[int], path: Path, now: float) -> Choice:
        elapsed = now - probe.since
        if path.target >= rates[probe.layer] * HEADROOM:
            self.layer, self._probe, self._retry = probe.layer, None, RETRY_S
            return Choice(self.layer)  # the estimate made room meanwhile
        if rates[probe.layer] == 0 or (elapsed < BURST_S and path.queueing):
            return self._failed(now)  # a queue is building: stop before it hurts
        if elapsed < BURST_S:
            return Choice(self.layer, max(0, probe.total - rates[self.layer]))
        arrived = path.delivered(probe.since, probe.since + BURST_S)
        if arrived is not None and arrived >= ARRIVED_SHARE * probe.total:
            self.layer, self._probe, self._trial = probe.layer, None, now
            return Choice(self.layer, carried=arrived)
        if arrived is not None or elapsed >= JUDGE_S:
            return self._failed(now)
        return Choice(self.layer)  # the burst is out; its feedback is on its way

    def _failed(self, now: float) -> Choice:
        self._probe = None
        self._next_probe = now + self._retry
        self._retry = min(self._retry * 2, RETRY_MAX_S)
        return Choice(self.layer)
