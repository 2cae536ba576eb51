"""lab-multilingual: MMLU-ProX-style multiple choice, the same questions in five languages.

A question *item* is language-free (a kind, its option concepts, the answer's position); it
is rendered in English, French, Spanish, German and Italian. Question kinds mix knowledge
(word categories, opposites) and rules (largest, smallest, next number), like MMLU's mix of
subjects. Items are assigned to splits by a hash, and every language of an item lands in the
same split, so test questions are new in every language.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from sae_merging.lab.splits import split_of
from sae_merging.tasks.base import Example

LANGUAGES = ("en", "fr", "es", "de", "it")
LETTERS = "ABCDEFGHIJ"

CATEGORIES = {
    "animal": {
        "en": ("dog", "cat", "horse", "cow", "bird", "fish"),
        "fr": ("chien", "chat", "cheval", "vache", "oiseau", "poisson"),
        "es": ("perro", "gato", "caballo", "vaca", "pájaro", "pez"),
        "de": ("Hund", "Katze", "Pferd", "Kuh", "Vogel", "Fisch"),
        "it": ("cane", "gatto", "cavallo", "mucca", "uccello", "pesce"),
    },
    "color": {
        "en": ("red", "blue", "green", "yellow", "black", "white"),
        "fr": ("rouge", "bleu", "vert", "jaune", "noir", "blanc"),
        "es": ("rojo", "azul", "verde", "amarillo", "negro", "blanco"),
        "de": ("rot", "blau", "grün", "gelb", "schwarz", "weiß"),
        "it": ("rosso", "blu", "verde", "giallo", "nero", "bianco"),
    },
    "fruit": {
        "en": ("apple", "pear", "banana", "cherry", "grape", "lemon"),
        "fr": ("pomme", "poire", "banane", "cerise", "raisin", "citron"),
        "es": ("manzana", "pera", "plátano", "cereza", "uva", "limón"),
        "de": ("Apfel", "Birne", "Banane", "Kirsche", "Traube", "Zitrone"),
        "it": ("mela", "pera", "banana", "ciliegia", "uva", "limone"),
    },
    "vehicle": {
        "en": ("car", "bus", "train", "boat", "plane", "bike"),
        "fr": ("voiture", "bus", "train", "bateau", "avion", "vélo"),
        "es": ("coche", "autobús", "tren", "barco", "avión", "bici"),
        "de": ("Auto", "Bus", "Zug", "Boot", "Flugzeug", "Fahrrad"),
        "it": ("auto", "autobus", "treno", "barca", "aereo", "bici"),
    },
}
CATEGORY_QUESTIONS = {
    "animal": {
        "en": "Which of these words is an animal?",
        "fr": "Lequel de ces mots est un animal ?",
        "es": "¿Cuál de estas palabras es un animal?",
        "de": "Welches dieser Wörter ist ein Tier?",
        "it": "Quale di queste parole è un animale?",
    },
    "color": {
        "en": "Which of these words is a color?",
        "fr": "Lequel de ces mots est une couleur ?",
        "es": "¿Cuál de estas palabras es un color?",
        "de": "Welches dieser Wörter ist eine Farbe?",
        "it": "Quale di queste parole è un colore?",
    },
    "fruit": {
        "en": "Which of these words is a fruit?",
        "fr": "Lequel de ces mots est un fruit ?",
        "es": "¿Cuál de estas palabras es una fruta?",
        "de": "Welches dieser Wörter ist eine Frucht?",
        "it": "Quale di queste parole è un frutto?",
    },
    "vehicle": {
        "en": "Which of these words is a vehicle?",
        "fr": "Lequel de ces mots est un véhicule ?",
        "es": "¿Cuál de estas palabras es un vehículo?",
        "de": "Welches dieser Wörter ist ein Fahrzeug?",
        "it": "Quale di queste parole è un veicolo?",
    },
}
OPPOSITES = {
    "en": (("big", "small"), ("hot", "cold"), ("fast", "slow"), ("long", "short"), ("happy", "sad"), ("strong", "weak")),
    "fr": (("grand", "petit"), ("chaud", "froid"), ("rapide", "lent"), ("long", "court"), ("heureux", "triste"), ("fort", "faible")),
    "es": (("grande", "pequeño"), ("caliente", "frío"), ("rápido", "lento"), ("largo", "corto"), ("feliz", "triste"), ("fuerte", "débil")),
    "de": (("groß", "klein"), ("heiß", "kalt"), ("schnell", "langsam"), ("lang", "kurz"), ("glücklich", "traurig"), ("stark", "schwach")),
    "it": (("grande", "piccolo"), ("caldo", "freddo"), ("veloce", "lento"), ("lungo", "corto"), ("felice", "triste"), ("forte", "debole")),
}  # fmt: skip
OPPOSITE_QUESTION = {
    "en": "What is the opposite of {word}?",
    "fr": "Quel est le contraire de {word} ?",
    "es": "¿Cuál es el contrario de {word}?",
    "de": "Was ist das Gegenteil von {word}?",
    "it": "Qual è il contrario di {word}?",
}
NUMBER_QUESTIONS = {
    "largest": {
        "en": "Which number is the largest?",
        "fr": "Quel nombre est le plus grand ?",
        "es": "¿Qué número es el mayor?",
        "de": "Welche Zahl ist die größte?",
        "it": "Quale numero è il più grande?",
    },
    "smallest": {
        "en": "Which number is the smallest?",
        "fr": "Quel nombre est le plus petit ?",
        "es": "¿Qué número es el menor?",
        "de": "Welche Zahl ist die kleinste?",
        "it": "Quale numero è il più piccolo?",
    },
    "next": {
        "en": "Which number comes after {n}?",
        "fr": "Quel nombre vient après {n} ?",
        "es": "¿Qué número va después de {n}?",
        "de": "Welche Zahl kommt nach {n}?",
        "it": "Quale numero viene dopo {n}?",
    },
}
QUESTION_WORD = {"en": "Question", "fr": "Question", "es": "Pregunta", "de": "Frage", "it": "Domanda"}
ANSWER_WORD = {"en": "Answer", "fr": "Réponse", "es": "Respuesta", "de": "Antwort", "it": "Risposta"}
KINDS = ("category", "opposite", "largest", "smallest", "next")


@dataclass(frozen=True)
class MultilingualSpec:
    """Sizes of lab-multilingual. `n_opt_items` / `n_test_items` questions, each in every
    language of `languages`; numbers in number questions are drawn from 0..max_number."""

    languages: tuple[str, ...] = LANGUAGES
    n_options: int = 4
    max_number: int = 20
    n_opt_items: int = 200
    n_test_items: int = 400


@dataclass(frozen=True)
class Item:
    """A language-free question: `options` are concept keys, `label` the answer's position."""

    kind: str
    subject: tuple
    options: tuple
    label: int


def _draw_item(rng: random.Random, spec: MultilingualSpec) -> Item:
    kind = rng.choice(KINDS)
    k = spec.n_options
    if kind == "category":
        category = rng.choice(sorted(CATEGORIES))
        others = [c for c in sorted(CATEGORIES) if c != category]
        answer = (category, rng.randrange(6))
        distractors = [(rng.choice(others), rng.randrange(6)) for _ in range(k - 1)]
        if len(set(distractors)) < k - 1:
            return _draw_item(rng, spec)
        subject = (category,)
    elif kind == "opposite":
        pair, side = rng.randrange(len(OPPOSITES["en"])), rng.randrange(2)
        subject = (pair, side)
        answer = (pair, 1 - side)
        pool = [(p, s) for p in range(len(OPPOSITES["en"])) for s in range(2) if p != pair]
        distractors = rng.sample(pool, k - 1)
    else:
        numbers = rng.sample(range(spec.max_number + 1), k)
        if kind == "next":
            n = rng.randrange(spec.max_number)
            subject = (n,)
            answer = n + 1
            pool = [m for m in range(spec.max_number + 2) if m != n + 1]
            distractors = rng.sample(pool, k - 1)
        else:
            subject = ()
            answer = max(numbers) if kind == "largest" else min(numbers)
            distractors = [m for m in numbers if m != answer]
    label = rng.randrange(k)
    options = tuple(distractors[:label]) + (answer,) + tuple(distractors[label:])
    return Item(kind, subject, options, label)


def _word(option: tuple | int, kind: str, language: str) -> str:
    if kind == "category":
        category, index = option
        return CATEGORIES[category][language][index]
    if kind == "opposite":
        pair, side = option
        return OPPOSITES[language][pair][side]
    return str(option)


def render(item: Item, language: str, uid: str) -> Example:
    """The item as a prompt listing lettered options; each option text is a continuation."""
    if item.kind == "category":
        question = CATEGORY_QUESTIONS[item.subject[0]][language]
    elif item.kind == "opposite":
        question = OPPOSITE_QUESTION[language].format(word=_word(item.subject, "opposite", language))
    else:
        n = item.subject[0] if item.subject else ""
        question = NUMBER_QUESTIONS[item.kind][language].format(n=n)
    words = [_word(option, item.kind, language) for option in item.options]
    lines = [f"{QUESTION_WORD[language]}: {question}"]
    lines += [f"{LETTERS[i]}. {word}" for i, word in enumerate(words)]
    lines.append(f"{ANSWER_WORD[language]}:")
    return Example(
        uid=uid,
        prompt="\n".join(lines),
        target=" " + words[item.label],
        choices=tuple(" " + word for word in words),
        label=item.label,
        group=language,
    )


def draw_items(spec: MultilingualSpec, split: str, n: int, seed: int) -> list[Item]:
    """`n` distinct items of `split`, deterministic in `seed`."""
    rng = random.Random(f"lab-multilingual/{split}/{seed}")
    items: list[Item] = []
    seen: set[Item] = set()
    while len(items) < n:
        item = _draw_item(rng, spec)
        if item in seen or split_of(("multilingual", item)) != split:
            continue
        seen.add(item)
        items.append(item)
    return items


def generate(spec: MultilingualSpec, split: str, n_items: int, seed: int) -> list[Example]:
    """Every item of the split rendered in every language (the MMLU-ProX layout)."""
    return [
        render(item, language, uid=f"lab-multilingual/{split}/{i}/{language}")
        for i, item in enumerate(draw_items(spec, split, n_items, seed))
        for language in spec.languages
    ]


def generate_training(
    spec: MultilingualSpec, n: int, seed: int, languages: tuple[str, ...] | None = None
) -> list[Example]:
    """Training examples: training items, each in one random language of `languages`."""
    languages = languages or spec.languages
    rng = random.Random(f"lab-multilingual/train-languages/{seed}/{languages}")
    items = draw_items(spec, "train", n, seed)
    return [
        render(item, rng.choice(languages), uid=f"lab-multilingual/train/{i}") for i, item in enumerate(items)
    ]


def vocabulary_text(spec: MultilingualSpec) -> list[str]:
    """Text covering every piece lab-multilingual can produce (for the tokenizer)."""
    texts = [" ".join(f"{LETTERS[i]}." for i in range(spec.n_options)), "0123456789 0 1 2 3 4 5 6 7 8 9"]
    for lang in spec.languages:
        texts.append(f"{QUESTION_WORD[lang]}: {ANSWER_WORD[lang]}:\n")
        texts += [q[lang] for q in CATEGORY_QUESTIONS.values()]
        texts += [q[lang].format(n=0) for q in NUMBER_QUESTIONS.values()]
        texts.append(OPPOSITE_QUESTION[lang].format(word=""))
        texts += [" " + " ".join(words[lang]) for words in CATEGORIES.values()]
        texts += [" " + " ".join(pair) for pair in OPPOSITES[lang]]
    return texts
