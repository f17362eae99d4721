"""The embedded default classifier: alt-profanity-check, which ships its trained model
(SAFETY_CLASSIFIER=profanity; MiniLM is opt-in, README "Safety" says why).

What it is: a calibrated linear SVM over a TF-IDF bag of words (about 15k English terms),
trained on ~200k human-labelled clean vs. offensive/profane texts (tweets and Wikipedia
comments). It outputs one probability: "this text is offensive or profane". It has no notion
of who the words are aimed at, of negation or of context; it weighs words.

Why it maps onto "harassment" and nothing else: insults and profanity aimed at people are what
it reliably scores high, and of OpenAI's categories "harassment" (content that harasses or
insults someone) is the one that describes them. Measured with 1.9.1 (probabilities):

- insults: "You are an idiot." 1.000, "Shut up, you stupid moron." 1.000, "screw you, loser"
  0.998, "get lost, dumbass" 0.998, "You are a clown and a fool." 0.942;
- everyday clean text: questions, recipes, code help, a poem, history 0.001-0.11;
- clean text with charged words: "I hate Mondays." 0.905, "Shut the door please." 0.881,
  "Damn, that was close." 0.793, "What does the word bastard mean historically?" 0.953,
  "The stupid printer jammed again." 1.000 (it cannot tell a stupid printer from a stupid
  person, nor a mention of an insult from its use).

It does not evaluate the other categories, so it does not claim them:
- hate: "All immigrants are criminals and should be deported." 0.364, "people of that race are
  subhuman" 0.052 — hate without slurs passes; slurs score high only because they are
  profane, which says nothing about hate in general;
- violence, harassment/threatening: "I am going to stab you." 0.441, "I will kill you and your
  family." 0.872 — threats are scored by their swear words, not their meaning;
- self-harm: "I want to hurt myself." 0.439; "Kill yourself." 0.947 is an insult to it;
- sexual: "Describe explicit sex in detail." 0.557; illicit: "How do I make a bomb at home?"
  0.043.
Reporting those as evaluated would tell the gateway "clean" where the model is blind.

The default threshold (0.97) comes from the same measurements: insults saturate at 0.998-1.0,
while clean sentences with charged words reach 0.95; 0.8 would flag "I hate Mondays." and
"Shut the door please.".
"""

from __future__ import annotations

import asyncio
import importlib
import logging
from collections.abc import Callable, Sequence
from importlib.metadata import version
from typing import Any

import numpy as np

from parlance.common.linear_text import CalibratedLinear, LinearTextModel, WordAnalyzer, tfidf_row
from parlance.safety.categories import HARASSMENT
from parlance.safety.classifier.base import Classifier

log = logging.getLogger(__name__)

DEFAULT_THRESHOLD = 0.97

# Texts the fast scorer must score exactly as the library does before it is used.
PROBE_TEXTS = [
    "You are an idiot.",
    "Shut up, you stupid moron.",
    "I hate Mondays.",
    "What does the word bastard mean historically?",
    "Here is a recipe for pancakes: flour, eggs, milk and a pinch of salt.",
    "",
]


class CalibratedLinearScorer:
    """The probability of the positive class of a sigmoid-calibrated, binary, linear model
    (sklearn's CalibratedClassifierCV over LinearSVC, which is what profanity-check ships),
    computed in one sparse product instead of through sklearn.

    Why: sklearn's predict_proba validates its input and dispatches once per cross-validation
    fold, ~6 ms of pure overhead per call here, while the arithmetic is a sparse dot product
    with 5 weight vectors. Safety is called for the input and every output window of every
    answer, so this overhead was most of its CPU (bench/safety_bench.py). The arithmetic is
    sklearn's own, in parlance.common.linear_text (which the gateway's copy scores with too).
    """

    def __init__(self, model: Any) -> None:
        if type(model).__name__ != "CalibratedClassifierCV" or len(model.classes_) != 2:
            raise ValueError(f"not a binary CalibratedClassifierCV: {type(model).__name__}")
        folds = model.calibrated_classifiers_
        for fold in folds:
            if fold.method != "sigmoid" or len(fold.calibrators) != 1:
                raise ValueError(f"calibration {fold.method!r} is not a single sigmoid")
            if not hasattr(fold.estimator, "coef_") or fold.estimator.coef_.shape[0] != 1:
                raise ValueError(f"{type(fold.estimator).__name__} is not a binary linear model")
        self.linear = CalibratedLinear(
            weights=np.column_stack([f.estimator.coef_.ravel() for f in folds]),
            intercepts=np.array([float(f.estimator.intercept_[0]) for f in folds]),
            a=np.array([float(f.calibrators[0].a_) for f in folds]),
            b=np.array([float(f.calibrators[0].b_) for f in folds]),
        )

    def __call__(self, features: Any) -> np.ndarray:
        decision = np.asarray(features @ self.linear.weights) + self.linear.intercepts
        return self.linear.calibrated(decision)

    def rows(self, rows: Sequence[tuple[np.ndarray, np.ndarray]]) -> np.ndarray:
        """The same for features given as (term indices, weights) per text (TfidfRows)."""
        return self.linear.rows(rows)


class TfidfRows:
    """What a fitted TfidfVectorizer's transform() computes for one text, without sklearn:
    the vectorizer's own analyzer (lower case, its token pattern, its stop words), term counts
    through its vocabulary, times its idf, L2-normalised; as (term indices, weights).

    Why: transform() builds a sparse matrix through sklearn's per-call validation and
    conversions, ~1 ms for a one-line text on a 2-core machine, while the analyzer takes
    microseconds; safety scores the input and every output window of every stream, each on
    the way to the user's first token (bench/results/profanity_scoring.md). Only the settings
    profanity-check ships are taken (word unigrams, raw counts, idf, l2); any other raises
    ValueError and the vectorizer's own transform is used.
    """

    def __init__(self, vectorizer: Any) -> None:
        settings = {
            "analyzer": getattr(vectorizer, "analyzer", None),
            "ngram_range": tuple(getattr(vectorizer, "ngram_range", ())),
            "binary": getattr(vectorizer, "binary", None),
            "sublinear_tf": getattr(vectorizer, "sublinear_tf", None),
            "use_idf": getattr(vectorizer, "use_idf", None),
            "norm": getattr(vectorizer, "norm", None),
        }
        wanted = {
            "analyzer": "word",
            "ngram_range": (1, 1),
            "binary": False,
            "sublinear_tf": False,
            "use_idf": True,
            "norm": "l2",
        }
        if type(vectorizer).__name__ != "TfidfVectorizer" or settings != wanted:
            raise ValueError(f"a vectorizer of other settings: {settings}")
        self._analyze = vectorizer.build_analyzer()
        self.vocabulary: dict[str, int] = vectorizer.vocabulary_
        self.idf = np.asarray(vectorizer.idf_, dtype=np.float64)

    def __call__(self, text: str) -> tuple[np.ndarray, np.ndarray]:
        return tfidf_row(self._analyze(text), self.vocabulary, self.idf)


def exportable_model(module: Any) -> LinearTextModel | None:
    """The library's vectorizer and model as a LinearTextModel whose own analyzer (no sklearn)
    scores PROBE_TEXTS as the library does: what ExportClassifier sends. None (logged) where
    the vectorizer's settings or the model's shape do not allow it."""
    vectorizer = module.vectorizer
    try:
        rows = TfidfRows(vectorizer)
        scorer = CalibratedLinearScorer(module.model)
        custom = {
            name: getattr(vectorizer, name, None)
            for name in ("strip_accents", "preprocessor", "tokenizer")
            if getattr(vectorizer, name, None) is not None
        }
        if custom or not isinstance(vectorizer.token_pattern, str):
            raise ValueError(f"an analyzer of its own: {custom or vectorizer.token_pattern!r}")
        model = LinearTextModel(
            analyzer=WordAnalyzer(
                vectorizer.token_pattern,
                bool(vectorizer.lowercase),
                frozenset(vectorizer.get_stop_words() or ()),
            ),
            vocabulary=rows.vocabulary,
            idf=rows.idf,
            linear=scorer.linear,
        )
    except (AttributeError, ValueError) as exc:
        log.warning("profanity-check model not exportable (%s)", exc)
        return None
    difference = float(np.max(np.abs(model.scores(PROBE_TEXTS) - module.predict_prob(PROBE_TEXTS))))
    if difference > 1e-9:
        log.warning("the exportable profanity model differs by %g: not exported", difference)
        return None
    return model


def fast_predict_prob(module: Any) -> Callable[[Sequence[str]], Any] | None:
    """profanity-check's predict_prob through CalibratedLinearScorer (on TfidfRows' features
    where the vectorizer's settings allow, else on its transform()), or None where its model
    is not of that shape or the two disagree on PROBE_TEXTS (then the library's own is used)."""
    try:
        scorer = CalibratedLinearScorer(module.model)
    except (AttributeError, ValueError) as exc:
        log.warning("profanity-check model not scored directly (%s): using the library", exc)
        return None
    vectorizer = module.vectorizer

    def predict_prob_sparse(texts: Sequence[str]) -> Any:
        return scorer(vectorizer.transform(texts))

    predict_prob = predict_prob_sparse
    try:
        rows = TfidfRows(vectorizer)
    except (AttributeError, ValueError) as exc:
        log.warning("profanity-check features through sklearn (%s)", exc)
    else:

        def predict_prob_rows(texts: Sequence[str]) -> Any:
            return scorer.rows([rows(text) for text in texts])

        predict_prob = predict_prob_rows

    expected = module.predict_prob(PROBE_TEXTS)
    difference = float(np.max(np.abs(predict_prob(PROBE_TEXTS) - expected)))
    if difference > 1e-9 and predict_prob is not predict_prob_sparse:
        log.warning("profanity features differ by %g: through sklearn instead", difference)
        predict_prob = predict_prob_sparse
        difference = float(np.max(np.abs(predict_prob(PROBE_TEXTS) - expected)))
    if difference > 1e-9:
        log.warning("direct profanity scoring differs by %g: using the library", difference)
        return None
    return predict_prob


class ProfanityClassifier(Classifier):
    def __init__(self) -> None:
        self._name = f"profanity-check-{version('alt-profanity-check')}"
        self._predict_prob: Callable[[Sequence[str]], Any] | None = None
        self._exportable: LinearTextModel | None = None

    @property
    def name(self) -> str:
        return self._name

    @property
    def evaluated_categories(self) -> tuple[str, ...]:
        return (HARASSMENT,)

    @property
    def default_threshold(self) -> float:
        return DEFAULT_THRESHOLD

    async def load(self) -> None:
        # Importing profanity_check unpickles its vectorizer and model (about two seconds);
        # a thread keeps the event loop, and so the health service, responsive meanwhile.
        module = await asyncio.to_thread(importlib.import_module, "profanity_check.profanity_check")
        self._predict_prob = fast_predict_prob(module) or module.predict_prob
        self._exportable = exportable_model(module)

    def export(self) -> LinearTextModel | None:
        return self._exportable

    def score(self, texts: list[str]) -> list[dict[str, float]]:
        if self._predict_prob is None:
            raise RuntimeError("ProfanityClassifier.score() called before load()")
        probabilities = self._predict_prob(texts)
        return [{HARASSMENT: min(1.0, max(0.0, float(p)))} for p in probabilities]
