"""The demo's synthetic restaurant reviews and the tasks over them (imported by
scripts/make_demo_model.py; no third-party packages).

Every review is built from parts, so every task's answer is known exactly:

    "the soup at marta's was cold but the staff were lovely, 4 stars"
      sentiment -> mixed          aspects -> food service      rating -> 4
      name      -> marta's        translate -> (word for word into "glorp", a made-up lexicon)
      verdict   -> good           dish -> soup                 (these two are never pretrained)

The same sentence answers differently per task, so only the task's prefix (in pretraining) or its
soft prompt (when served) can select the answer.
"""
import random

NAMES = [
    "marta's", "luigi's", "the blue door", "chez paul", "rosa's", "the old mill", "kenji's",
    "bella vista", "the fig tree", "casa lupe", "anna's", "the red lion", "golden wok", "sushi ko",
    "the green olive", "omar's", "little saigon", "the copper pot", "nina's", "el toro",
    "the night owl", "pasta house", "the salt shed", "mama kim's",
]
# (noun, plural?)
DISHES = [
    ("soup", False), ("pasta", False), ("steak", False), ("curry", False), ("pizza", False),
    ("salad", False), ("fish", False), ("bread", False), ("burger", False), ("risotto", False),
    ("ramen", False), ("pie", False), ("noodles", True), ("dumplings", True), ("tacos", True),
    ("fries", True),
]
ASPECTS = {
    # aspect: (nouns, positive words, negative words)
    "food": (DISHES,
             ["delicious", "fresh", "perfect", "tasty", "superb", "good"],
             ["cold", "bland", "burnt", "salty", "stale", "bad"]),
    "service": ([("staff", True), ("waiter", False), ("waitress", False), ("service", False),
                 ("host", False)],
                ["lovely", "friendly", "quick", "attentive", "kind"],
                ["rude", "slow", "careless", "grumpy", "cold"]),
    "price": ([("prices", True), ("bill", False), ("wine list", False)],
              ["fair", "cheap", "reasonable", "fine"],
              ["steep", "high", "silly", "outrageous"]),
    "ambience": ([("room", False), ("music", False), ("terrace", False), ("decor", False)],
                 ["cozy", "quiet", "charming", "bright"],
                 ["noisy", "dark", "cramped", "dull"]),
}
OTHER_ASPECTS = ["service", "price", "ambience"]

# The pretraining tasks, with the text prefix T5-style multi-task training put before the input.
PREFIXES = {
    "sentiment": "sentiment:",
    "aspects": "aspects:",
    "rating": "rating:",
    "name": "name:",
    "translate": "translate to glorp:",
}
# Tasks the model never sees in pretraining: only a tuned soft prompt can ask for them.
UNSEEN = ["verdict", "dish"]
TASKS = list(PREFIXES) + UNSEEN
# A plain-English instruction per task (never seen in pretraining), for the "text instruction"
# baseline of the accuracy table.
INSTRUCTIONS = {
    "sentiment": "is this review positive, negative or mixed?",
    "aspects": "which parts of the visit does this review talk about?",
    "rating": "how many stars did the reviewer give?",
    "name": "which restaurant is this review about?",
    "translate": "say this in glorp:",
    "verdict": "was the visit good, fine or bad?",
    "dish": "which dish did they eat?",
}
# Class labels of the classification tasks (generation tasks have none).
LABELS = {
    "sentiment": ["positive", "negative", "mixed"],
    "rating": ["1", "2", "3", "4", "5"],
    "verdict": ["good", "fine", "bad"],
}


def english_words():
    """Every English word a review can contain (the glorp lexicon's domain)."""
    words = {"the", "at", "was", "were", "and", "but", "our", "star", "stars", "we", "had", "it",
             "they", "served"}
    for nouns, pos, neg in ASPECTS.values():
        for noun, _ in nouns:
            words.update(noun.split())
        words.update(pos)
        words.update(neg)
    return sorted(words)


def glorp_lexicon(seed=7):
    """English word -> a made-up word (consonant-vowel syllables), one to one, seeded."""
    rng = random.Random(seed)
    english = set(english_words())
    used = set()
    lexicon = {}
    for w in english_words():
        while True:
            n = rng.choice([1, 2, 2, 3])
            g = "".join(rng.choice("bdfgklmnprstvz") + rng.choice("aeiou") for _ in range(n))
            if g not in used and g not in english:
                break
        used.add(g)
        lexicon[w] = g
    return lexicon


GLORP = glorp_lexicon()


class Review:
    """One review as parts: [(text, kind)] where kind is 'name', 'num' or 'word'."""

    def __init__(self, rng):
        self.name = rng.choice(NAMES)
        dish, dish_pl = rng.choice(DISHES)
        self.dish = dish
        n_other = rng.choice([0, 1, 1, 2])
        others = rng.sample(OTHER_ASPECTS, n_other)
        self.aspects = ["food"] + others
        self.polarity = [rng.random() < 0.5 for _ in self.aspects]
        if all(self.polarity):
            self.rating = rng.choice([4, 5])
        elif not any(self.polarity):
            self.rating = rng.choice([1, 2])
        else:
            self.rating = rng.choice([2, 3, 4])

        parts = []
        w = lambda s: parts.extend((t, "word") for t in s.split())  # noqa: E731
        be = "were" if dish_pl else "was"
        food_adj = rng.choice(ASPECTS["food"][1 if self.polarity[0] else 2])
        form = rng.randrange(3)
        if form == 0:
            w(f"the {dish} at")
            parts.append((self.name, "name"))
            w(f"{be} {food_adj}")
        elif form == 1:
            w("at")
            parts.append((self.name, "name"))
            w(f"the {dish} {be} {food_adj}")
        else:
            w(f"our {dish} at")
            parts.append((self.name, "name"))
            w(f"{be} {food_adj}")
        for i, aspect in enumerate(others, start=1):
            nouns, pos, neg = ASPECTS[aspect]
            noun, plural = rng.choice(nouns)
            adj = rng.choice(pos if self.polarity[i] else neg)
            join = "and" if self.polarity[i] == self.polarity[i - 1] else "but"
            w(f"{join} the {noun} {'were' if plural else 'was'} {adj}")
        # ", 4 stars": the comma sticks to the word before it.
        last, kind = parts[-1]
        parts[-1] = (last + ",", kind)
        parts.append((str(self.rating), "num"))
        w("star" if self.rating == 1 else "stars")
        self.parts = parts

    def text(self):
        return " ".join(t for t, _ in self.parts)

    def glorp(self):
        out = []
        for t, kind in self.parts:
            if kind != "word":
                out.append(t)
                continue
            comma = t.endswith(",")
            g = GLORP[t.rstrip(",")]
            out.append(g + ("," if comma else ""))
        return " ".join(out)

    def target(self, task):
        if task == "sentiment":
            if all(self.polarity):
                return "positive"
            if not any(self.polarity):
                return "negative"
            return "mixed"
        if task == "aspects":
            return " ".join(self.aspects)
        if task == "rating":
            return str(self.rating)
        if task == "name":
            return self.name
        if task == "translate":
            return self.glorp()
        if task == "verdict":
            return "good" if self.rating >= 4 else "fine" if self.rating == 3 else "bad"
        if task == "dish":
            return self.dish
        raise ValueError(task)


SENTINELS = 10


def span_corruption(text, rng, noise=0.15, mean_span=3):
    """T5's unsupervised objective at word level: spans replaced by <extra_id_N> in the input,
    the target lists each sentinel followed by the words it hid, then a closing sentinel."""
    words = text.split()
    n = len(words)
    n_noise = max(1, round(n * noise))
    n_spans = max(1, min(SENTINELS - 1, round(n_noise / mean_span)))
    starts = sorted(rng.sample(range(n), n_spans))
    masked = [False] * n
    for s in starts:
        length = max(1, round(rng.expovariate(1 / mean_span)))
        for j in range(s, min(n, s + length)):
            masked[j] = True
    inp, tgt, k, i = [], [], 0, 0
    while i < n:
        if masked[i]:
            inp.append(f"<extra_id_{k}>")
            tgt.append(f"<extra_id_{k}>")
            while i < n and masked[i]:
                tgt.append(words[i])
                i += 1
            k += 1
        else:
            inp.append(words[i])
            i += 1
    tgt.append(f"<extra_id_{k}>")
    return " ".join(inp), " ".join(tgt)
