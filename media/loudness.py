"""Who is speaking: a smoothed loudness per microphone from its RFC 6464 audio levels, and the
choice of the few loudest a listener hears, with hysteresis so that it does not flap."""

from __future__ import annotations

import math
from collections.abc import Hashable, Iterable
from dataclasses import dataclass, field

# Loudness is kept as 127 - level: 0 is silence (-127 dBov), 127 full scale (0 dBov).
SILENT = 127
# Seconds over which loudness is smoothed: a syllable carries, one packet does not.
SMOOTHING = 0.15
# At or above this smoothed loudness (about -50 dBov) a microphone is heard as speaking: above
# a quiet room's noise, below soft speech.
SPEECH = 127 - 50
# Seconds from a microphone's first loud packet, its loudness staying above SPEECH, before it
# counts as speaking: a cough, a chair or a door does not take a speaker's place.
ONSET = 0.12
# Seconds one goes on counting as speaking after falling quiet: the pauses of a sentence.
HANGOVER = 1.5
# A voice that is not chosen replaces a chosen one only if it is this much louder (dB).
MARGIN = 6.0


@dataclass
class Voice:
    """One microphone's smoothed loudness and since when it speaks."""

    loudness: float = 0.0
    heard_at: float | None = None
    above_since: float | None = None  # since when it has stayed above SPEECH
    speaking_until: float = -math.inf  # it counts as speaking until then
    bare: bool = False  # packets came without a level: it cannot be ranked

    def hear(self, level: int, now: float) -> None:
        """Take one packet's audio level (0 loudest … 127 silent)."""
        loud = SILENT - min(SILENT, max(0, level))
        self._decay(now)
        alpha = 1.0 if self.heard_at is None else min(1.0, (now - self.heard_at) / SMOOTHING)
        # Packets of one frame come together; the first of a new voice counts in full.
        self.loudness += max(alpha, 0.2) * (loud - self.loudness)
        self.heard_at = now
        if loud >= SPEECH:
            if self.above_since is None:
                self.above_since = now
            # Only a loud packet makes one speak: the smoothed tail of a short noise, heard
            # after it ended, must not carry it past ONSET.
            if now - self.above_since >= ONSET:
                self.speaking_until = now + HANGOVER
        elif self.loudness < SPEECH:
            self.above_since = None  # a pause between syllables, smoothed over, does not count

    def _decay(self, now: float) -> None:
        # Nothing heard (DTX sends nothing in silence, a muted microphone nothing at all): the
        # loudness falls as if silence had been heard.
        if self.heard_at is not None and now - self.heard_at > 2 * SMOOTHING:
            self.loudness *= math.exp(-(now - self.heard_at) / SMOOTHING)
            self.above_since = None

    def speaking(self, now: float) -> bool:
        """Tell whether this microphone counts as speaking now."""
        return now < self.speaking_until

    def level(self, now: float) -> float:
        """The smoothed loudness now (0 silence … 127 full scale)."""
        if self.heard_at is not None and now - self.heard_at > 2 * SMOOTHING:
            return self.loudness * math.exp(-(now - self.heard_at) / SMOOTHING)
        return self.loudness


@dataclass
class Choice:
    """The voices one group of listeners hears: at most `count` of those speaking."""

    count: int
    chosen: list[Hashable] = field(default_factory=list)

    def update(self, voices: dict[Hashable, Voice], now: float) -> list[Hashable]:
        """Choose again among `voices`; return the chosen, the longest-chosen first."""
        self.chosen = [k for k in self.chosen if k in voices and voices[k].speaking(now)]
        waiting = sorted(
            (k for k, v in voices.items() if k not in self.chosen and v.speaking(now)),
            key=lambda k: voices[k].level(now),
            reverse=True,
        )
        for k in waiting:
            if len(self.chosen) < self.count:
                self.chosen.append(k)
                continue
            if not self.chosen:
                break
            weakest = min(self.chosen, key=lambda c: voices[c].level(now))
            if voices[k].level(now) >= voices[weakest].level(now) + MARGIN:
                self.chosen.remove(weakest)
                self.chosen.append(k)
        return self.chosen


def chosen_for(
    choices: dict[tuple[int, frozenset[Hashable]], Choice],
    heard: Iterable[Hashable],
    voices: dict[Hashable, Voice],
    count: int,
    now: float,
) -> list[Hashable]:
    """Return the `count` voices chosen for listeners who can hear `heard` (listeners hearing
    the same voices, as many at once, share one choice, kept in `choices`)."""
    heard = frozenset(heard)
    choice = choices.get((count, heard))
    if choice is None:
        choice = choices[(count, heard)] = Choice(count)
    return choice.update({k: voices[k] for k in heard if k in voices}, now)
