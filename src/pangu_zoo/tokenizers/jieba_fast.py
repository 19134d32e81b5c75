"""jieba 0.42.1 precise-mode segmentation (HMM on) at native speed, with output identical to `jieba.cut`.

The work is split the way jieba itself splits it:

1. The word route (dictionary DAG and the max-probability path) comes from jieba-rs (`rjieba`) with HMM off,
   loaded with jieba's own `dict.txt` line by line and the same total frequency (jieba counts a repeated
   entry twice), so it computes the same floats in the same order. Without HMM both libraries give the
   same words (checked on every shared corpus). jieba-rs counts more characters as Chinese (CJK extension
   blocks, compatibility ideographs) than jieba does; the text is cut at those characters first, so both see
   the same blocks.
2. jieba then sends every run of single characters that is not a dictionary word to its HMM
   (`jieba.finalseg.cut`). jieba-rs's HMM differs from jieba's (its number regex, and other results on the
   corpora), so those runs are found here in the no-HMM output and cut by `HmmCutter`, a NumPy copy of
   jieba's Viterbi with the same float64 sums in the same order and the same tie-breaking, many runs at once.
   Runs repeat, so their cuts are cached.

Output is the segments joined by one ASCII space with ' ' and '\\n' inside segments replaced, which is what the
PanGu-alpha tokenizer feeds SentencePiece; replacing before segmenting is safe because jieba cuts every ' '
and '\\n' into a segment of its own ('\\r\\n' being the one two-character case, replaced after).
"""

from __future__ import annotations

import functools
import os
import re
from collections.abc import Iterable, Sequence

import numpy as np

# jieba's block characters (jieba.re_han_default) and its HMM's Chinese range (jieba.finalseg.re_han)
_JIEBA_HAN = "\u4e00-\u9fd5a-zA-Z0-9+#&._%\\-"
_HMM_FIRST, _HMM_LAST = 0x4E00, 0x9FD5
# Characters jieba-rs puts in its Chinese blocks and jieba does not (a superset of jieba-rs's extra ranges).
_RUST_ONLY_HAN = re.compile("([\u3400-\u4dbf\u9fd6-\u9fff\uf900-\ufaff\U00020000-\U0003ffff])")
# A maximal run, of at least two tokens, of route words that jieba gathers for its HMM: single block
# characters, and ASCII letters/digits that the no-HMM output has merged into one token (jieba's dictionary has
# no word of two or more ASCII letters/digits, so such a token is always merged single characters).
_TOKEN = f"(?:[{_JIEBA_HAN}]|[a-zA-Z0-9]+)"
_SINGLES_RUN = re.compile(f"((?<![^ ]){_TOKEN}(?: {_TOKEN})+(?![^ ]))")
_CHINESE_LINE = re.compile(f"^[{chr(_HMM_FIRST)}-{chr(_HMM_LAST)}]+$", re.MULTILINE)
_STATES = "BEMS"  # jieba breaks ties between states by their letter, so keep them sorted
_CACHE_LIMIT = 1 << 20
_SMALL_HMM_INPUT = 16  # characters


class HmmCutter:
    """jieba.finalseg's Viterbi over B/E/M/S states, vectorised over many strings of Chinese characters."""

    def __init__(self):
        from jieba import finalseg

        self.start = np.array([finalseg.start_P[state] for state in _STATES])
        self.trans = np.array([[finalseg.trans_P[a].get(b, finalseg.MIN_FLOAT) for b in _STATES] for a in _STATES])
        self.emit = np.full((_HMM_LAST - _HMM_FIRST + 1, len(_STATES)), finalseg.MIN_FLOAT)
        for column, state in enumerate(_STATES):
            for char, logp in finalseg.emit_P[state].items():
                if _HMM_FIRST <= ord(char) <= _HMM_LAST:
                    self.emit[ord(char) - _HMM_FIRST, column] = logp
        # the two states that may precede each state, as jieba's PrevStatus lists them
        self.prev_a, self.prev_b = (np.array([_STATES.index(finalseg.PrevStatus[state][i]) for state in _STATES])
                                    for i in (0, 1))
        self.a_wins_ties = self.prev_a > self.prev_b
        self.trans_a = self.trans[self.prev_a, np.arange(len(_STATES))]
        self.trans_b = self.trans[self.prev_b, np.arange(len(_STATES))]

    def cut(self, words: Iterable[str]) -> dict[str, str]:
        """Each string (two or more characters in U+4E00..U+9FD5) -> its HMM words joined by one space."""
        words = sorted(words, key=len, reverse=True)
        if not words:
            return {}
        lengths = np.fromiter(map(len, words), np.int64, len(words))
        starts = np.cumsum(lengths) - lengths
        points = np.frombuffer("".join(words).encode("utf-32-le"), np.uint32)
        rows_of_chars = self.emit[points - _HMM_FIRST]  # emission log-probabilities of every character
        longest = int(lengths[0])
        # words are sorted longest first, so the words still running at step t are the first live[t]
        live = np.searchsorted(-lengths, -np.arange(longest + 1), side="left")
        final = np.empty(len(words), np.int64)
        scores = self.start + rows_of_chars[starts]
        choices = []
        for t in range(1, longest):
            count = live[t]
            done = slice(count, live[t - 1])  # words whose last character was t - 1
            final[done] = np.where(scores[done, 3] >= scores[done, 1], 3, 1)  # max((V, y) for y in "ES")
            scores = scores[:count]
            emission = rows_of_chars[starts[:count] + t]
            from_a = (scores[:, self.prev_a] + self.trans_a) + emission  # jieba's V + trans + emit, left to right
            from_b = (scores[:, self.prev_b] + self.trans_b) + emission
            take_a = (from_a > from_b) | ((from_a == from_b) & self.a_wins_ties)
            scores = np.where(take_a, from_a, from_b)
            choices.append(np.where(take_a, self.prev_a, self.prev_b))
        count = live[longest - 1]
        final[:count] = np.where(scores[:count, 3] >= scores[:count, 1], 3, 1)
        # walk back; a word ends after every E (1) or S (3), the states with the low bit set
        word_end = np.zeros(points.size, bool)
        state = np.zeros(len(words), np.int64)
        for t in range(longest - 1, -1, -1):
            count = live[t]
            state[live[t + 1]:count] = final[live[t + 1]:count]
            word_end[starts[:count] + t] = state[:count] & 1
            if t:
                state[:count] = choices[t - 1][np.arange(count), state[:count]]
        word_end[starts + lengths - 1] = False  # no space after a string's last word
        position = np.arange(points.size) + np.cumsum(word_end) - word_end
        spaced = np.full(points.size + int(word_end.sum()), ord(" "), np.uint32)
        spaced[position] = points
        text = spaced.tobytes().decode("utf-32-le")
        begins, ends = position[starts].tolist(), (position[starts + lengths - 1] + 1).tolist()
        return {word: text[begin:end] for word, begin, end in zip(words, begins, ends, strict=True)}


class FastJieba:
    """`joined(text)` is `" ".join(jieba.cut(text))` with ' ' and '\\n' inside segments replaced, computed fast."""

    def __init__(self, space: str, newline: str):
        import rjieba
        from jieba import finalseg

        self.space, self.newline = space, newline
        self._router, self._words = _load_router(rjieba)
        self._hmm = HmmCutter()
        self._han_split, self._skip_split = finalseg.re_han.split, finalseg.re_skip.split
        self._finalseg_cut = finalseg.cut
        self._cuts: dict[str, str] = {}  # run of route words -> jieba's segments of it, space-joined

    def joined(self, text: str) -> str:
        """Segments of `text` joined by ' '; ValueError when `text` cannot be encoded as UTF-8."""
        return self.joined_many([text])[0]

    def joined_many(self, texts: Sequence[str]) -> list[str]:
        """`joined` of each text, the HMM runs of all of them cut together."""
        if len(self._cuts) > _CACHE_LIMIT:
            self.clear_cache()
        split_texts = [_SINGLES_RUN.split(" ".join(self._route_words(text))) for text in texts]
        missing = {run for parts in split_texts for run in parts[1::2]}.difference(self._cuts)
        if missing:
            self._cut_runs(missing)
        joined = []
        for parts in split_texts:
            parts[1::2] = map(self._cuts.__getitem__, parts[1::2])
            joined.append("".join(parts).replace("\n", self.newline))
        return joined

    def _route_words(self, text: str) -> list[str]:
        """jieba's words without HMM, ' ' replaced ('\\n' later: jieba keeps '\\r\\n' as one segment)."""
        text = text.replace(" ", self.space)
        try:
            if not _RUST_ONLY_HAN.search(text):
                return self._router.cut(text, False)
            words = []
            for index, part in enumerate(_RUST_ONLY_HAN.split(text)):
                words.extend(self._router.cut(part, False) if index % 2 == 0 else [part])
            return words
        except UnicodeEncodeError as error:  # lone surrogates
            raise ValueError(str(error)) from None

    def clear_cache(self) -> None:
        """Forget the cached cuts of single-character runs (they are rebuilt as text comes)."""
        self._cuts.clear()

    def _cut_runs(self, runs: set[str]) -> None:
        """jieba's __cut_DAG for each buffer: a dictionary word as single characters, else finalseg.cut."""
        runs = list(runs)
        buffers = "\n".join(runs).replace(" ", "").split("\n")
        in_dictionary = self._words.intersection(buffers)
        chinese = set(_CHINESE_LINE.findall("\n".join(buffers))) - in_dictionary
        hmm_input = set(chinese)
        mixed = {}
        for buffer in set(buffers) - chinese - in_dictionary:  # finalseg.cut: Chinese blocks, then the rest
            pieces = []
            for block in self._han_split(buffer):
                if 0 < len(block) and _HMM_FIRST <= ord(block[0]) <= _HMM_LAST:
                    pieces.append((True, block))
                    if len(block) > 1:
                        hmm_input.add(block)
                else:
                    pieces.extend((False, piece) for piece in self._skip_split(block) if piece)
            mixed[buffer] = pieces
        if sum(map(len, hmm_input)) > _SMALL_HMM_INPUT:
            hmm = self._hmm.cut(hmm_input)
        else:  # NumPy's fixed cost is more than jieba's own Viterbi on a few characters
            hmm = {word: " ".join(self._finalseg_cut(word)) for word in hmm_input}
        segments = {buffer: hmm[buffer] for buffer in chinese}
        segments.update((buffer, " ".join(buffer)) for buffer in in_dictionary)
        for buffer, pieces in mixed.items():
            segments[buffer] = " ".join(hmm.get(piece, piece) if chinese_block else piece
                                        for chinese_block, piece in pieces)
        self._cuts.update(zip(runs, map(segments.__getitem__, buffers), strict=True))


def _read_dictionary() -> tuple[dict[str, int], int]:
    """jieba's dict.txt as jieba.Tokenizer.gen_pfdict reads it: word -> frequency (the last entry of a word
    wins) and the total of every line's frequency."""
    import jieba

    with open(os.path.join(os.path.dirname(jieba.__file__), "dict.txt"), "rb") as file:
        lines = file.read().decode("utf-8").strip().split("\n")
    fields = " ".join(lines).split(" ")
    if len(fields) == 3 * len(lines):  # every line "word frequency tag": read the columns at once
        words, counts = fields[0::3], list(map(int, fields[1::3]))
    else:
        pairs = [line.strip().split(" ")[:2] for line in lines]
        words, counts = [word for word, _ in pairs], [int(count) for _, count in pairs]
    return dict(zip(words, counts, strict=True)), sum(counts)


def _load_router(rjieba):
    """An empty jieba-rs filled with jieba's dictionary, and the set of the words jieba's DAG may use."""
    frequencies, total = _read_dictionary()
    words = [word for word, frequency in frequencies.items() if frequency]  # jieba's DAG skips frequency 0
    router = rjieba.Jieba.empty()
    for word in words:
        router.add_word(word, frequencies[word], None)
    # jieba adds every line to its total, a repeated word's too: make up the difference with a word that never
    # occurs inside a block (U+3000 is not a block character), so both take the logarithm of the same total
    routed = sum(frequencies[word] for word in words)
    if total > routed:
        router.add_word("\u3000\u3000", total - routed, None)
    return router, frozenset(words)


@functools.cache
def fast_jieba(space: str, newline: str) -> FastJieba | None:
    """The process's `FastJieba` for these replacements, or None when rjieba is not installed or jieba's
    HMM has been told to force-split words (then only jieba itself gives jieba's answer)."""
    try:
        import rjieba
    except ImportError:
        return None
    from jieba import finalseg

    if finalseg.Force_Split_Words or not hasattr(rjieba.Jieba, "empty"):
        return None
    return FastJieba(space, newline)
