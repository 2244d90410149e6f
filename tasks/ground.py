"""Grounding: is each sentence of an answer supported by the retrieved sources?

The default `LexicalSemanticScorer` combines two signals per answer sentence and source:
- lexical: the weighted share of the sentence's content tokens that occur in the source. Numbers
  and names are what small generators invent, so they weigh more than other words; stopwords and
  meta words ("answer", "passage", "according") don't count at all;
- semantic: the best cosine between the sentence and one sentence of the source, not the whole
  source, whose vector is diluted by everything else it says.
The two are combined by a logistic function whose weights and threshold were fitted on real data by
`bench/grounding.py` (see `DEFAULT_*` below). Anything with the same `score` method can stand in for
it (`GroundingScorer`), for example the trained `tasks/ground_model.py:TrainedGroundingScorer`
(`retrieval.grounding_scorer = "trained:<path>"`).

Sentences that claim nothing checkable are never reported as unsupported and don't count in
`answer_support`: refusals ("the documents don't say") and sentences without a content token ("Yes.",
"That's right."), which token overlap cannot judge and which the fitted scorer flagged every time
(all 70 bare yes/no right answers of HaluEval rows 4000–4999, before this rule), so a flag there would carry no information.

A sentence with a link, e-mail address or phone number that its trusted context (the sources given,
the question) does not contain is unsupported whatever its other words: that is how an injected
instruction phishes through an otherwise supported answer, and token overlap would not notice a
look-alike domain (`travel-example-corp.com` for `travel.example-corp.com`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol, Sequence

import numpy as np

if TYPE_CHECKING:  # settings import this module for its threshold: keep it light
    from tasks.embed import Embedder

# Fitted by `bench/grounding.py`: weighted logistic regression (numpy, Newton) of right vs hallucinated
# answers on HaluEval QA dev rows 0–3999, each answer weighted so both classes weigh the same within
# every answer word count (hallucinated answers are ~5x longer: unweighted, the fit learns "short means
# right"). Threshold: best F1 of flagging hallucinated answers on the same weighted rows. The fit gave
# (-9.936, 9.637, 2.111) and 0.613; lexical dominates, the semantic term adds a little once length is
# controlled. Results on held-out rows 4000–4999 and on SmolLM2's own answers: bench/results/grounding-latest.md.
DEFAULT_WEIGHTS = (-9.94, 9.64, 2.11)  # (bias, lexical, semantic)
DEFAULT_THRESHOLD = 0.61
NUMBER_WEIGHT = 3.0  # a wrong number or name is the typical hallucination; a wrong verb rarely is
NAME_WEIGHT = 2.0

MAX_CITED = 999  # no prompt packs more sources: a marker beyond it cites nothing
_CITATION = re.compile(r"\s*\[(\d+(?:\s*[,;\-–]\s*\d+)*)\]")
# A sentence ends at . ! ? (or an ellipsis), possibly followed by closing quotes/brackets and
# citation markers, then whitespace and something that can start a sentence.
_BOUNDARY = re.compile(r"[.!?…]+[\"'”’)\]]*(?:\s*\[\d+(?:\s*[,;\-–]\s*\d+)*\])*(?=\s+[\"'“‘(\[]?[A-Z0-9])")
# Scraped sources often lose the space between paragraphs ("...century.First for Women is...").
_JOINED = re.compile(r"(?<=[a-z]{2}[.!?])(?=[A-Z][a-z])")
_BLOCK = re.compile(r"\n\s*\n|\n(?=\s*(?:[-*•]|\d+[.)])\s)")
_ABBREVIATIONS = frozenset(
    "mr mrs ms dr prof sr jr st mt vs e.g i.e al inc ltd co corp no nr fig figs approx ca cf dept est "
    "jan feb mar apr jun jul aug sep sept oct nov dec u.s u.k u.n p pp vol ed eds rev gen col lt sgt capt "
    "op ch sec art para".split()
)
_TOKEN = re.compile(r"\w+(?:[.,'’]\w+)*")
_STOPWORDS = frozenset(
    """a about above after again against all also am an and any are aren't as at be because been before being
    below between both but by can can't cannot could couldn't did didn't do does doesn't doing don't down during
    each either few for from further had hadn't has hasn't have haven't having he he'd he'll he's her here here's
    hers herself him himself his how how's however i i'd i'll i'm i've if in into is isn't it it's its itself
    just let's me more most mustn't my myself neither no nor not of off on once only or other ought our ours
    ourselves out over own same shan't she she'd she'll she's should shouldn't so some such than that that's the
    their theirs them themselves then there there's these they they'd they'll they're they've this those through
    to too under until up very was wasn't we we'd we'll we're we've were weren't what what's when when's where
    where's which while who who's whom why why's will with won't would wouldn't yes you you'd you'll you're
    you've your yours yourself yourselves
    one ones many much may might must shall also yet still even well like known called named whose
    answer answers question passage passages context text document documents source sources information
    according based provided given mentioned stated says said indeed correct specifically
    re vs etc inc ltd co corp""".split()
)
# Spelled-out numbers match digits ("two" == "2"); "one" is left out, it is mostly a pronoun.
_NUMBER_WORDS = {
    w: str(i)
    for i, w in enumerate(
        "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen "
        "sixteen seventeen eighteen nineteen twenty".split()
    )
    if w != "one"
}
_REFUSAL = re.compile(
    r"\b(?:i|we)\s+(?:do not|don't|cannot|can't|could not|couldn't|am unable to|was unable to)\s+"
    r"(?:know|find|answer|tell|determine|say|see)\b"
    r"|\b(?:no|not enough|insufficient)\s+(?:relevant\s+)?(?:information|details?|mention|data)\b"
    r"|\b(?:passages?|context|documents?|sources?|text|excerpts?)\s+(?:\w+\s+){0,3}?"
    r"(?:does not|doesn't|do not|don't|did not|didn't|cannot|can't)\s+(?:\w+\s+){0,2}?"
    r"(?:mention|say|state|contain|provide|answer|specify|include|give|cover|address)\b"
    r"|\b(?:is|are|was|were)\s+not\s+(?:mentioned|stated|provided|specified|given|found|included|covered)\b"
    r"|\bunable to (?:answer|find|determine)\b",
    re.IGNORECASE,
)
# Contact details a reader could act on. Bare domains only with a lower-case common or two-letter TLD
# (not a file extension), so "v4.2", "e.g.", "EUR.It" and "Node.js" are not domains; a phone number
# has 7 to 15 digits and a "+" or separators, and is not a date, a year range or an amount.
_CONTACT = re.compile(
    # Matches start only where a run of address characters starts: retrying inside a long run
    # ("a.a.a.a...") would make the search quadratic.
    r"(?P<email>(?<![\w.+-])[\w.+-]+@[\w-]+(?:\.[\w-]+)+)"
    r"|(?P<url>\b(?:https?|ftp)://[^\s<>\"'\]\[)(]+|\bwww\.[^\s<>\"'\]\[)(]+"
    r"|(?<![\w.-])(?:[A-Za-z0-9-]+\.)+(?:com|net|org|info|biz|io|ai|app|dev|xyz|online|site|shop"
    r"|(?!js|ts|py|md|rs|sh|rb|cs|db|gz)[a-z]{2})\b(?:/[^\s<>\"'\]\[)(]*)?)"
    r"|(?P<phone>(?<![\w+])(?:\+|\b)\(?\d[\d ()./-]{5,}\d\b)"
)
_NOT_A_PHONE = re.compile(r"\d+|\d{1,4}([./-])\d{1,2}\1\d{1,4}|\d{4}\s*[-/]\s*\d{2,4}|\d{1,3}(?:[ ,.]\d{3})+|\d+\.\d+")
_LIST_MARKER = re.compile(r"^\s*(?:[-*•]|\d+[.)])\s+")
_HEDGE_JOINERS = re.compile(r"\b(?:but|however|although|though|whereas)\b", re.IGNORECASE)


# --- sentences ---------------------------------------------------------------------------------


def _splits_here(text: str, start: int, end: int) -> bool:
    """Whether the punctuation ending at `end` ends a sentence that began at `start`."""
    before = _CITATION.sub("", text[start:end]).rstrip("\"'”’)] ")
    word = re.search(r"([\w.]+)$", before)
    if word is None:
        return True
    token = word.group(1).lower()
    if token in _ABBREVIATIONS:
        return False
    if len(token) == 1 and token.isalpha():  # an initial: "J. R. R. Tolkien"
        return False
    if before.strip().isdigit():  # a list number: "1. Install ..."
        return False
    return True


def _split(text: str, joined: bool = False) -> list[str]:
    if joined:
        text = _JOINED.sub(" ", text)
    out: list[str] = []
    for block in _BLOCK.split(text):
        block = " ".join(block.split())
        start = 0
        for m in _BOUNDARY.finditer(block):
            if _splits_here(block, start, m.start()):
                out.append(block[start : m.end()].strip())
                start = m.end()
        out.append(block[start:].strip())
    return [s for s in out if s]


def split_sentences(text: str) -> list[str]:
    """The sentences of an answer as written, citation markers kept with the sentence they follow.

    Splits at sentence punctuation followed by a capital, a digit or a quote, and at paragraph
    breaks and list items; not after abbreviations ("e.g.", "Dr.", "U.S."), initials or list numbers,
    nor inside numbers and versions ("3.5 kg", "v4.2"). Use `strip_citations` for the text to score.
    """
    return _split(text)


def strip_citations(sentence: str, available: int = MAX_CITED) -> tuple[str, tuple[int, ...]]:
    """(sentence without its markers, the 0-based indices of the `available` sources it cites):
    "[1][3]" -> (0, 2), "[2-4]" -> (1, 2, 3).

    Markers are model output: a reference outside the sources is dropped and a range clipped to them,
    so "[1-9999999999]" costs no more than "[1-5]".
    """
    cited: dict[int, None] = {}
    for m in _CITATION.finditer(sentence):
        for part in re.split(r"\s*[,;]\s*", m.group(1)):
            bounds = [_reference(x, available) for x in re.split(r"\s*[\-–]\s*", part)]
            cited.update(dict.fromkeys(range(max(bounds[0], 1) - 1, min(bounds[-1], available))))
    clean = _LIST_MARKER.sub("", _CITATION.sub("", sentence))  # a list number is not a claimed number
    clean = re.sub(r"\s+([.!?,;:])", r"\1", clean)  # "fact [1]." -> "fact."
    return " ".join(clean.split()), tuple(cited)


def _reference(digits: str, available: int) -> int:
    """A marker's number; one past the sources when it is longer than any source number could be
    (and `int` of thousands of digits would raise)."""
    return int(digits) if len(digits) <= len(str(available)) else available + 1


def untrusted_contacts(text: str, context: str) -> list[str]:
    """The links, e-mail addresses and phone numbers in `text` that `context` does not contain.

    A link or address counts as contained when the context has it whole (case and scheme aside; a
    link may stop at a path boundary of one in the context), a phone number when its digits equal, or
    end, a number in the context: `travel-example-corp.com` is not `travel.example-corp.com`.
    """
    found = _contacts(text)
    if not found:
        return []
    trusted = _contacts(context)
    known = {c for kind, c in trusted if kind != "phone"}
    numbers = [c for kind, c in trusted if kind == "phone"]
    out = []
    for kind, c in found:
        if kind == "phone":
            ok = any(n.endswith(c) or c.endswith(n) for n in numbers if min(len(n), len(c)) >= 7)
        else:
            ok = any(k == c or k.startswith(c + "/") or k.startswith(c + "?") for k in known)
        if not ok:
            out.append(c)
    return out


def _contacts(text: str) -> list[tuple[str, str]]:
    """(kind, normalised value) of every contact detail in `text`: links lower-cased without scheme,
    "www." and trailing punctuation; phone numbers as their digits without trunk or international zeros."""
    out = []
    for m in _CONTACT.finditer(text):
        kind = m.lastgroup or ""
        value = m.group(0)
        if kind == "phone":
            digits = re.sub(r"\D", "", value.replace("(0)", "")).lstrip("0")  # "+44 (0)20" == "020" == "0044 20"
            if 7 <= len(digits) <= 15 and not _NOT_A_PHONE.fullmatch(value.strip()):
                out.append((kind, digits))
            continue
        value = re.sub(r"^(?:[a-z]+://)?(?:www\.)?", "", value.lower()).rstrip(".,;:!?'\"/")
        out.append((kind, value))
    return out


def source_windows(source: str) -> list[str]:
    """The pieces of a source a sentence is compared with: its sentences.

    Not the whole source, whose vector is diluted by everything else it says (AUROC 0.61 vs 0.69 on
    same-length HaluEval pairs), and not also pairs of adjacent sentences, which cost twice the
    embeddings and measured no better (bench/grounding.py).
    """
    return _split(source, joined=True)


def is_refusal(sentence: str) -> bool:
    """Whether a sentence only says the sources don't answer (and so claims nothing to check).

    A sentence that also goes on with "but ..." may carry a claim, so it is not a refusal.
    """
    return bool(_REFUSAL.search(sentence)) and not _HEDGE_JOINERS.search(sentence)


# --- lexical support ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Token:
    """A content token of an answer sentence: what is matched against the source, and how much it counts."""

    key: str  # normalised form that is matched
    weight: float


def _normalise(token: str) -> str:
    t = token.lower().replace("’", "'")
    if t in _NUMBER_WORDS:
        return _NUMBER_WORDS[t]
    if re.search(r"\d", t):
        return re.sub(r"(?<=\d),(?=\d{3})", "", t)  # "1,500" == "1500"
    if t.endswith("'s"):
        t = t[:-2]
    if len(t) > 3 and t.endswith("s") and not t.endswith("ss"):
        t = t[:-1]  # plural: "stays" == "stay"; cheap and good enough for matching
    return t


def content_tokens(text: str, number_weight: float = NUMBER_WEIGHT, name_weight: float = NAME_WEIGHT) -> list[Token]:
    """The tokens of `text` that carry a claim, each with its weight; stopwords and meta words are dropped.

    A capitalised token counts as a name unless it opens the sentence, where capitals say nothing.
    """
    out = []
    for i, m in enumerate(_TOKEN.finditer(text)):
        raw = m.group(0)
        low = raw.lower().replace("’", "'")
        if low in _STOPWORDS or (len(low) == 1 and not low.isdigit()):
            continue
        key = _normalise(raw)
        if any(c.isdigit() for c in key):
            weight = number_weight
        elif (raw[0].isupper() and i > 0) or any(c.isupper() for c in raw[1:]):
            weight = name_weight
        else:
            weight = 1.0
        out.append(Token(key, weight))
    return out


def vocabulary(text: str) -> frozenset[str]:
    """The normalised tokens of a source, for `lexical_support`."""
    return frozenset(_normalise(m.group(0)) for m in _TOKEN.finditer(text))


def lexical_support(tokens: Sequence[Token], vocabulary: frozenset[str]) -> float:
    """Weighted share of `tokens` found in `vocabulary`; 1.0 when there is nothing to check."""
    total = sum(t.weight for t in tokens)
    if total == 0:
        return 1.0
    return sum(t.weight for t in tokens if t.key in vocabulary) / total


# --- scoring -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class SentenceSupport:
    sentence: str  # without citation markers
    score: float  # support in [0, 1]
    supported: bool  # score >= threshold (always True for a refusal)
    source: int | None  # 0-based index of the best-supporting source
    lexical: float  # the component scores, for explanations
    semantic: float
    citations: tuple[int, ...] = ()  # 0-based sources the sentence cited
    checkable: bool = True  # False for refusals and content-free sentences: supported, left out of `answer_support`
    refusal: bool = False  # says the sources don't answer
    untrusted: tuple[str, ...] = ()  # contact details its trusted context lacks: the sentence is unsupported


class GroundingScorer(Protocol):
    """A scorer may also offer `score_many(items)` (a list of `score` results for (answer, sources)
    pairs) to judge a batch at once; the answerer uses it when present."""

    def score(self, answer: str, sources: Sequence[str]) -> list[SentenceSupport]:
        """One `SentenceSupport` per sentence of `answer`, judged against `sources`."""


class LexicalSemanticScorer:
    """Logistic combination of lexical overlap and windowed embedding similarity (see the module docstring)."""

    def __init__(
        self,
        embedder: Embedder,
        weights: tuple[float, float, float] = DEFAULT_WEIGHTS,
        threshold: float = DEFAULT_THRESHOLD,
        number_weight: float = NUMBER_WEIGHT,
        name_weight: float = NAME_WEIGHT,
        cache_size: int = 20_000,
    ):
        self.embedder = embedder
        self.cache_size = cache_size
        self._cache: dict[str, np.ndarray] = {}
        self.weights = weights
        self.threshold = threshold
        self.number_weight = number_weight
        self.name_weight = name_weight

    def combine(self, lexical: np.ndarray | float, semantic: np.ndarray | float) -> np.ndarray:
        """The support score in (0, 1) for component scores (vectorised)."""
        b, wl, ws = self.weights
        z = b + wl * np.asarray(lexical, dtype=np.float64) + ws * np.asarray(semantic, dtype=np.float64)
        return 1.0 / (1.0 + np.exp(-z))

    def score(self, answer: str, sources: Sequence[str], question: str = "") -> list[SentenceSupport]:
        """One `SentenceSupport` per answer sentence; an empty answer gives an empty list.

        With no sources nothing is supported (score 0, source None), except refusals. A sentence with a
        contact detail that neither the sources nor the question contain scores 0 (`untrusted`).
        """
        return self.score_many([(answer, sources)], [question])[0]

    def score_many(
        self, items: Sequence[tuple[str, Sequence[str]]], questions: Sequence[str] | None = None
    ) -> list[list[SentenceSupport]]:
        """`score` for many (answer, sources) pairs (and their questions) with one embedding call for all.

        Source sentences recur across the questions of a batch and across batches (the same chunks
        are retrieved again), so their vectors are kept in a bounded cache.
        """
        questions = list(questions) if questions is not None else [""] * len(items)
        prepared = [self._prepare(answer, sources, q) for (answer, sources), q in zip(items, questions, strict=True)]
        texts = list(dict.fromkeys(t for p in prepared for t in p.texts()))
        vectors = self._vectors(texts)
        return [self._judge(p, vectors) for p in prepared]

    def _prepare(self, answer: str, sources: Sequence[str], question: str = "") -> "_Prepared":
        sources = list(sources)
        sentences = [strip_citations(s, len(sources)) for s in split_sentences(answer)]
        sentences = [(s, c) for s, c in sentences if s]
        refusals = [is_refusal(s) for s, _ in sentences]
        tokens = [content_tokens(s, self.number_weight, self.name_weight) for s, _ in sentences]
        claims = [i for i, (r, t) in enumerate(zip(refusals, tokens)) if not r and t]
        context = "\n".join([*sources, question])
        untrusted = [tuple(untrusted_contacts(s, context)) for s, _ in sentences]
        windows = [source_windows(s) for s in sources] if claims else [[] for _ in sources]
        return _Prepared(sentences, refusals, tokens, claims, sources, windows, untrusted)

    def _vectors(self, texts: Sequence[str]) -> dict[str, np.ndarray]:
        missing = [t for t in texts if t not in self._cache]
        # Copies: a cached row must not keep its whole batch's array alive.
        found = {t: v.copy() for t, v in zip(missing, self.embedder.embed(missing))} if missing else {}
        found.update((t, self._cache[t]) for t in texts if t not in found)
        self._cache.update((t, found[t]) for t in missing)
        while len(self._cache) > self.cache_size:
            self._cache.pop(next(iter(self._cache)))  # oldest first (dicts keep insertion order)
        return found

    def _judge(self, p: "_Prepared", vectors: dict[str, np.ndarray]) -> list[SentenceSupport]:
        owner = np.array([j for j, w in enumerate(p.windows) for _ in w], dtype=np.int64)
        flat = [w for ws in p.windows for w in ws]
        lexical = np.zeros((len(p.sentences), len(p.sources)))
        semantic = np.zeros((len(p.sentences), len(p.sources)))
        if p.claims and flat:
            claim_vectors = np.stack([vectors[p.sentences[i][0]] for i in p.claims])
            sims = np.clip(claim_vectors @ np.stack([vectors[w] for w in flat]).T, 0.0, 1.0)
            vocabularies = [vocabulary(s) for s in p.sources]
            for row, i in enumerate(p.claims):
                for j, vocab in enumerate(vocabularies):
                    lexical[i, j] = lexical_support(p.tokens[i], vocab)
                    mask = owner == j
                    semantic[i, j] = float(sims[row, mask].max()) if mask.any() else 0.0

        out = []
        for i, (sentence, cited) in enumerate(p.sentences):
            if p.untrusted[i]:  # whatever else it says: the link or number is not the sources'
                out.append(SentenceSupport(sentence, 0.0, False, None, 0.0, 0.0, cited, True, p.refusals[i], p.untrusted[i]))
                continue
            if p.refusals[i] or not p.tokens[i]:
                out.append(SentenceSupport(sentence, 1.0, True, None, 0.0, 0.0, cited, False, p.refusals[i]))
                continue
            if not p.sources or not flat:
                out.append(SentenceSupport(sentence, 0.0, False, None, 0.0, 0.0, cited))
                continue
            per_source = self.combine(lexical[i], semantic[i])
            j = int(np.argmax(per_source))
            s = float(per_source[j])
            out.append(
                SentenceSupport(sentence, s, s >= self.threshold, j, float(lexical[i, j]), float(semantic[i, j]), cited)
            )
        return out


@dataclass
class _Prepared:
    """An answer split into sentences and its sources into windows, before anything is embedded."""

    sentences: list[tuple[str, tuple[int, ...]]]
    refusals: list[bool]
    tokens: list[list[Token]]
    claims: list[int]  # indices of the sentences that claim something checkable
    sources: list[str]
    windows: list[list[str]]
    untrusted: list[tuple[str, ...]]  # per sentence: contact details the sources and question lack

    def texts(self) -> list[str]:
        """What needs a vector: the claim sentences and every source window."""
        if not self.claims:
            return []
        return [self.sentences[i][0] for i in self.claims] + [w for ws in self.windows for w in ws]


def answer_support(supports: Sequence[SentenceSupport]) -> float:
    """One support number per answer: the weakest claim sentence's score.

    The minimum, because one invented sentence makes the answer unsafe however well the others are
    supported. Sentences that are not `checkable` are left out; an answer with none (empty, only
    refusals, a bare "Yes.") gets 1.0.
    """
    scores = [s.score for s in supports if s.checkable]
    return min(scores) if scores else 1.0
