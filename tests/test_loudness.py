"""The choice of voices heard, on a clock of its own: who enters, who stays, what does not."""

from __future__ import annotations

from collections.abc import Hashable

from teleconsult.media.loudness import HANGOVER, Choice, Voice

FRAME = 0.02  # a packet of Opus every 20 ms


def level(dbov: float) -> int:
    """The RFC 6464 level of a loudness in dBov."""
    return min(127, max(0, round(-dbov)))


class Room:
    """Voices heard on a clock of 20 ms steps, and one listener's choice of three."""

    def __init__(self, *names: str, count: int = 3) -> None:
        self.voices: dict[Hashable, Voice] = {n: Voice() for n in names}
        self.loud: dict[str, float | None] = dict.fromkeys(names, None)  # dBov; None: DTX
        self.choice = Choice(count)
        self.now = 0.0
        self.history: list[list[Hashable]] = []

    def run(self, seconds: float) -> list[Hashable]:
        for _ in range(round(seconds / FRAME)):
            self.now += FRAME
            for name, dbov in self.loud.items():
                if dbov is not None:
                    self.voices[name].hear(level(dbov), self.now)
            self.history.append(list(self.choice.update(self.voices, self.now)))
        return self.history[-1]


def test_the_three_loudest_speaking_are_chosen_and_silence_is_not() -> None:
    room = Room("a", "b", "c", "d", "e")
    room.loud.update(a=-20, b=-22, c=-25, d=-70, e=None)  # d: a quiet room's noise, e: DTX
    assert sorted(room.run(1.0)) == ["a", "b", "c"]  # type: ignore[type-var]
    room.loud.update(a=None, b=None)
    room.run(HANGOVER + 0.5)  # the pauses of a sentence are over: they stopped
    assert room.history[-1] == ["c"]


def test_a_new_louder_speaker_is_heard_within_300_ms() -> None:
    room = Room("a", "b", "c", "d")
    room.loud.update(a=-25, b=-25, c=-25)
    room.run(1.0)
    room.loud["d"] = -12  # starts to talk, clearly louder than the three
    steps = len(room.history)
    room.run(1.0)
    first = next(i for i, c in enumerate(room.history[steps:]) if "d" in c)
    assert (first + 1) * FRAME <= 0.3
    assert len(room.history[-1]) == 3


def test_short_noises_and_small_differences_do_not_flap() -> None:
    room = Room("a", "b", "c", "d")
    room.loud.update(a=-20, b=-24, c=-26, d=-70)
    room.run(1.0)
    settled = sorted(room.history[-1])  # type: ignore[type-var]
    for _ in range(5):  # a cough: 100 ms, loud, then the room's noise again
        room.loud["d"] = -5
        room.run(0.1)
        room.loud["d"] = -70
        room.run(0.5)
    # Another voice a little louder than the weakest chosen (less than the margin): no swap.
    room.loud["d"] = -23
    room.run(3.0)
    assert all(sorted(c) == settled for c in room.history[-150:])  # type: ignore[type-var]
    assert len({tuple(sorted(c)) for c in room.history[50:]}) == 1  # type: ignore[type-var]


def test_a_speaker_pausing_keeps_its_place_unless_another_talks_meanwhile() -> None:
    room = Room("a", "b", count=1)
    room.loud.update(a=-20)
    room.run(1.0)
    assert room.history[-1] == ["a"]
    for _ in range(3):  # the pauses of a sentence; b only murmurs a word in them
        room.loud.update(a=None, b=-24)
        room.run(0.1)
        room.loud.update(b=None)
        room.run(0.5)
        room.loud.update(a=-20)
        room.run(1.0)
    assert all(c == ["a"] for c in room.history[50:])
    # b talks on while a is silent: the one place goes to the one speaking.
    room.loud.update(a=None, b=-24)
    room.run(0.6)
    assert room.history[-1] == ["b"]


def test_a_noise_shorter_than_the_onset_never_speaks_however_its_packets_arrive() -> None:
    """The smoothed loudness of a 100 ms bang stays high after it: that tail must not count."""
    for gap in (FRAME, 0.002):  # packets as sent, or a late burst arriving together
        voice, now = Voice(), 0.0
        for _ in range(50):  # a quiet microphone, about -66 dBov
            now += FRAME
            voice.hear(66, now)
        for _ in range(5):  # 100 ms of sound at -1 dBov
            now += gap
            voice.hear(1, now)
        for _ in range(50):
            now += FRAME
            voice.hear(66, now)
            assert not voice.speaking(now), (gap, now)
    # The same sound for 300 ms is speech.
    for _ in range(15):
        now += FRAME
        voice.hear(1, now)
    assert voice.speaking(now)
