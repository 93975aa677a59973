"""Deterministic, instruction-like synthetic text for tests and benchmarks of the index.

Nothing is downloaded: instructions come from templates in the style of Self-Instruct /
Alpaca tasks ("Write a short poem about ...", "Given a list of ..., ...", "Translate ...")
whose slots are filled from word lists, plus a long tail of pseudo-words (names, terms)
drawn with a Zipf law so the vocabulary keeps growing with the corpus as real text does.
A controlled share of items are near-duplicates of earlier ones (word swaps, insertions,
deletions, reorders, case/punctuation changes), the case the ROUGE-L filter exists for.

Not used by the index itself.
"""

from __future__ import annotations

import bisect
import itertools
import random
import re

__all__ = ["InstructionGenerator"]

_CREATE = ["Write", "Compose", "Draft", "Create", "Generate", "Produce", "Come up with", "Craft", "Invent", "Design"]
_FORMS = [
    "poem", "short story", "haiku", "essay", "paragraph", "tweet", "blog post", "limerick", "song",
    "letter", "email", "speech", "dialogue", "product description", "review", "slogan", "joke", "riddle",
    "summary", "outline", "recipe", "news headline", "cover letter", "movie plot", "advertisement",
    "toast", "bedtime story", "sonnet", "press release", "job posting", "lesson plan", "quiz",
    "travel itinerary", "motivational quote", "cover story", "fable", "fairy tale", "podcast intro",
]
_ADJ = [
    "short", "funny", "creative", "simple", "detailed", "persuasive", "formal", "informal", "catchy",
    "sad", "happy", "mysterious", "inspiring", "brief", "thoughtful", "healthy", "cheap", "quick",
    "unusual", "popular", "modern", "ancient", "small", "large", "friendly", "professional", "romantic",
    "scary", "educational", "practical", "innovative", "sustainable", "traditional", "effective",
    "common", "rare", "beautiful", "strange", "important", "famous", "local", "global", "digital",
    "personal", "historical", "scientific", "political", "economic", "cultural", "natural",
]
_NOUNS = [
    "ocean", "friendship", "climate change", "artificial intelligence", "coffee", "winter", "summer",
    "city", "forest", "mountain", "river", "robot", "dog", "cat", "garden", "school", "teacher",
    "student", "doctor", "hospital", "computer", "phone", "internet", "music", "painting", "book",
    "library", "museum", "airport", "train", "car", "bicycle", "bridge", "house", "kitchen", "bread",
    "chocolate", "apple", "banana", "pizza", "soccer", "basketball", "chess", "election", "democracy",
    "economy", "inflation", "bank", "money", "job", "interview", "vacation", "beach", "island", "desert",
    "planet", "star", "moon", "sun", "galaxy", "rocket", "satellite", "virus", "vaccine", "exercise",
    "sleep", "diet", "water", "energy", "solar panel", "battery", "electric vehicle", "recycling",
    "pollution", "history", "war", "peace", "culture", "language", "grammar", "poetry", "novel",
    "movie", "actor", "singer", "concert", "festival", "holiday", "birthday", "wedding", "family",
    "parent", "child", "baby", "grandmother", "neighbor", "community", "volunteer", "charity",
    "startup", "company", "customer", "product", "marketing", "sales", "team", "meeting", "project",
    "deadline", "software", "database", "algorithm", "network", "security", "password", "privacy",
    "robotics", "math", "physics", "chemistry", "biology", "medicine", "law", "justice", "freedom",
    "happiness", "anxiety", "stress", "kindness", "honesty", "courage", "time", "memory", "dream",
    "night", "morning", "rain", "snow", "storm", "tree", "flower", "bird", "fish", "whale", "lion",
    "elephant", "insect", "farm", "village", "road", "map", "journey", "adventure", "castle", "dragon",
    "king", "queen", "wizard", "ghost", "pirate", "detective", "mystery", "secret", "gift", "letter",
    "smartphone", "video game", "social media", "newspaper", "television", "radio", "photograph",
]
_AUDIENCE = [
    "a five year old", "kids", "teenagers", "college students", "beginners", "experts", "my boss",
    "a customer", "senior citizens", "new employees", "parents", "a friend", "my team", "investors",
    "a general audience", "non-native speakers", "software engineers", "doctors", "tourists",
]
_TONES = ["formal", "polite", "friendly", "concise", "persuasive", "humorous", "professional", "positive",
          "neutral", "enthusiastic", "serious", "casual"]
_LANGS = ["French", "Spanish", "German", "Italian", "Chinese", "Japanese", "Korean", "Portuguese", "Russian",
          "Arabic", "Hindi", "Dutch", "Swedish", "Turkish", "Greek"]
_ITEMS = ["fruits", "vegetables", "countries", "cities", "animals", "numbers", "words", "sentences",
          "movies", "books", "songs", "colors", "names", "dates", "emails", "products", "sports",
          "programming languages", "integers", "strings", "companies", "planets", "tools", "ingredients"]
_CATEGORIES = ["positive", "negative", "neutral", "fact", "opinion", "spam", "not spam", "fruit",
               "vegetable", "mammal", "reptile", "true", "false", "formal", "informal", "urgent", "not urgent"]
_PLANGS = ["Python", "JavaScript", "Java", "C++", "Go", "Rust", "SQL", "Ruby", "TypeScript", "Bash"]
_CODE_TASKS = [
    "reverses a string", "checks whether a number is prime", "sorts a list of integers",
    "finds the largest element in an array", "counts the vowels in a sentence", "merges two sorted lists",
    "removes duplicates from a list", "computes the factorial of a number", "checks if a word is a palindrome",
    "returns the n-th Fibonacci number", "parses a date string", "converts Celsius to Fahrenheit",
    "validates an email address", "flattens a nested list", "computes the average of a list",
]
_LIST_TASKS = [
    "return the one that appears most often", "sort them in alphabetical order", "remove the duplicates",
    "find the longest one", "group them by their first letter", "count how many there are",
    "pick the odd one out", "find the smallest one", "reverse their order", "return the sum",
]
_ACTIONS = ["improve", "reduce", "increase", "learn", "organize", "clean", "fix", "build", "start", "save",
            "protect", "plan", "manage", "understand", "explain", "prepare", "choose", "avoid", "measure"]
_ACTIONS_ING = ["improving", "reducing", "learning", "organizing", "cleaning", "building", "starting",
                "saving", "planning", "managing", "preparing", "choosing", "avoiding", "writing", "reading"]
_ROLES = ["a teacher", "a doctor", "a lawyer", "a chef", "a pirate", "a detective", "a tour guide", "a CEO",
          "a scientist", "a customer service agent", "an astronaut", "a librarian", "a coach", "a poet",
          "a historian", "a software engineer", "a farmer", "a journalist"]
_PEOPLE = ["scientists", "writers", "painters", "musicians", "athletes", "inventors", "leaders", "poets",
           "architects", "philosophers", "explorers", "chefs"]
_UNITS = ["miles", "kilometers", "pounds", "kilograms", "liters", "gallons", "inches", "centimeters",
          "hours", "minutes", "dollars", "euros", "degrees Celsius", "degrees Fahrenheit"]
_MATH = ["sum", "product", "difference", "average", "greatest common divisor", "least common multiple",
         "ratio", "quotient"]
_VERBS_PAST = ["walked", "jumped", "said", "found", "lost", "bought", "sold", "wrote", "read", "opened",
               "closed", "painted", "cooked", "visited", "watched", "heard", "built", "broke", "fixed", "won"]
_PREPS = ["in", "on", "near", "under", "behind", "across", "through", "over", "into", "from", "with"]
_FILLERS = ["please", "briefly", "carefully", "quickly", "also", "really", "very", "new", "best", "own",
            "simple", "clearly", "then", "just", "exactly", "some", "all", "each", "every", "only"]
_TASK_VERBS = [
    "write", "explain", "describe", "list", "give", "create", "suggest", "find", "identify", "compare",
    "classify", "summarize", "translate", "rewrite", "generate", "analyze", "evaluate", "predict", "design",
    "propose", "calculate", "convert", "edit", "outline", "plan", "recommend", "name", "tell", "show",
    "discuss", "choose", "rank", "estimate", "draft", "imagine", "argue", "justify", "simplify", "expand",
    "paraphrase", "categorize", "detect", "extract", "rate", "review", "critique", "prepare", "teach",
]
_VERBS = [
    "use", "make", "build", "change", "help", "affect", "improve", "reduce", "support", "protect",
    "replace", "explain", "cause", "prevent", "connect", "measure", "describe", "require", "create",
    "compare", "teach", "sell", "buy", "grow", "move", "open", "keep", "solve", "test", "learn",
]
_DETS = ["a", "the", "this", "your", "my", "some", "each", "every", "another", "one", "two", "three", "their"]
_WH = ["What", "How", "Why", "When", "Which", "Where", "Who"]
_AUX = ["is", "are", "does", "do", "can", "should", "would", "could", "will", "might"]
_CONNECT = ["and", "or", "but", "so that", "because", "while", "if", "unless", "when", "before", "after"]
_SYLLABLES = ["ka", "lo", "mi", "tra", "ven", "sol", "dor", "ri", "an", "bel", "cor", "da", "el", "fin", "gar",
              "hal", "is", "jen", "kor", "lum", "mar", "nor", "os", "pel", "qui", "ros", "sta", "tor", "ul",
              "vas", "wen", "xi", "yor", "zan", "ber", "cha", "dru", "fel", "gro", "hin"]

_TEMPLATES = [
    "{create} a {form} about {topic}.",
    "{create} a {tone} {form} about {topic} for {audience}.",
    "{create} a {adj} {form} about {topic}.",
    "Write a {form} in the style of {name} about {topic}.",
    "Explain {topic} to {audience}.",
    "Explain why {topic} is important for {audience}.",
    "Explain the difference between {noun} and {noun2}.",
    "Describe {topic} in {n} sentences.",
    "Summarize the main ideas of {topic} in {n} bullet points.",
    "Give me {n} {adj} ideas for {topic}.",
    "List {n} {items} that start with the letter {letter}.",
    "Suggest {n} names for a {adj} {noun} shop called {name}.",
    "Classify the following statement as {cat} or {cat2}: {sentence}",
    "Is the following statement true or false? {sentence}",
    "Translate the sentence \"{sentence}\" into {lang}.",
    "Rewrite the following sentence to make it more {tone}: {sentence}",
    "Correct the grammar in this sentence: {sentence}",
    "Given a list of {items}, {list_task}.",
    "Write a {plang} function that {code_task}.",
    "How can I {action} my {noun}?",
    "What are the most {adj} ways to {action} {topic}?",
    "Compare {topic} and {topic2}.",
    "Generate a list of questions to ask {audience} about {topic}.",
    "Create a {n}-day plan to {action} your {noun}.",
    "Find the {math} of {num} and {num2}.",
    "Solve the equation {num}x + {num2} = {num3}.",
    "Pretend you are {role}. {create} a {form} about {topic}.",
    "Tell me a {adj} fact about {topic}.",
    "Design a {adj} {noun} for {audience}.",
    "Propose a {adj} solution to the problem of {topic}.",
    "Write an email to {role} asking about {topic}.",
    "What would happen if every {noun} could talk?",
    "Name {n} famous {people} from {name}.",
    "Analyze the pros and cons of {topic}.",
    "Convert {num} {unit} to {unit2}.",
    "Extract all the {items} mentioned in the following text: {sentence}",
    "Provide {n} tips for {action_ing} {topic}.",
    "Sort the following {items} by length: {name}, {name2}, {name3}.",
    "Write a dialogue between {role} and {role2} about {topic}.",
    "Outline the steps to {action} a {adj} {noun}.",
    "Recommend a {form} for someone who likes {topic}.",
    "Who is {name} and why is {name} known for {topic}?",
    "Identify the main theme of the {form} about {topic}.",
    "Brainstorm {n} {adj} slogans for a {noun} company.",
    "Make a shopping list for a {adj} dinner with {noun}.",
    "Answer the following question about {topic}: what is {name}?",
    "Edit this paragraph about {topic} to be more {tone}.",
    "Find the odd one out: {noun}, {noun2}, {noun3}, {name}.",
    "Tell me whether {name} is a {cat} or a {cat2}.",
    "In {n} words or less, describe {topic}.",
]
# Optional extra requirements, appended to about half of the instructions (real
# instructions are rarely just the bare template).
_CLAUSES = [
    "Make sure to mention {topic}.",
    "Use no more than {n} words.",
    "Include an example involving {topic}.",
    "Keep it suitable for {audience}.",
    "The answer should be {tone} and {adj}.",
    "Focus on {topic} rather than {topic2}.",
    "Explain your reasoning step by step.",
    "Format the answer as a {form}.",
    "Mention at least {n} {items}.",
    "Avoid talking about {topic}.",
    "Start with a question about {topic}.",
    "Use the word {name} at least once.",
    "End with a {adj} remark about {noun}.",
    "Assume the reader knows nothing about {topic}.",
    "Write it from the point of view of {role}.",
    "Include a title.",
    "Set it in {name} during the {adj} {noun}.",
]
_SLOT_RE = re.compile(r"\{(\w+)\}")


class InstructionGenerator:
    """Seeded generator of instruction-like strings.

    Args:
        seed: everything produced is a deterministic function of the seed.
        rare_words: size of the pseudo-word vocabulary (names, terms). Small values make
            collisions and near-threshold pairs common (good for tests); large values give
            the long-tailed vocabulary of a real 100K-1M instruction pool.
        long_rate: share of long instructions (a context passage of 50-300+ words).
        template_rate: share of fresh instructions built from task templates ("Write a
            poem about ..."); the rest come from a small free-form grammar.
    """

    def __init__(self, seed: int = 0, rare_words: int = 30000, long_rate: float = 0.02,
                 template_rate: float = 0.4) -> None:
        self.rng = random.Random(seed)
        self.long_rate = long_rate
        self.template_rate = template_rate
        names_rng = random.Random(seed ^ 0x5EED)
        names: list[str] = []
        seen: set[str] = set()
        while len(names) < rare_words:
            w = "".join(names_rng.choice(_SYLLABLES) for _ in range(names_rng.randint(2, 4)))
            if w not in seen:
                seen.add(w)
                names.append(w.capitalize())
        self._names = names
        # Zipf(1.05) over the pseudo-words: a few are common, most are rare.
        self._name_cum = list(itertools.accumulate(1.0 / (r + 1) ** 1.05 for r in range(len(names))))
        self._vocab_words = [w for ws in (_NOUNS, _ADJ, _FILLERS, _VERBS_PAST, _ACTIONS) for w in ws]

    # -------------------------------------------------------------- pieces

    def _name(self) -> str:
        rng = self.rng
        i = bisect.bisect_left(self._name_cum, rng.random() * self._name_cum[-1])
        return self._names[min(i, len(self._names) - 1)]

    def _np(self) -> str:
        """A noun phrase: determiner, optional adjectives, one or two nouns."""
        rng = self.rng
        words = [rng.choice(_DETS)]
        for _ in range(rng.choice([0, 0, 1, 1, 2])):
            words.append(rng.choice(_ADJ))
        words.append(self._noun())
        if rng.random() < 0.25:
            words.append(self._noun())
        return " ".join(words)

    def _tail(self) -> str:
        """A prepositional phrase, a relative clause or a coordinated clause."""
        rng = self.rng
        r = rng.random()
        if r < 0.5:
            return f"{rng.choice(_PREPS)} {self._np()}"
        if r < 0.75:
            return f"that {rng.choice(_VERBS)}s {self._np()}"
        return f"{rng.choice(_CONNECT)} {rng.choice(_VERBS)} {self._np()}"

    def _free(self) -> str:
        """A free-form instruction from a small grammar: an imperative or a question."""
        rng = self.rng
        if rng.random() < 0.65:
            head = f"{rng.choice(_TASK_VERBS).capitalize()} {self._np()}"
        else:
            head = f"{rng.choice(_WH)} {rng.choice(_AUX)} {self._np()} {rng.choice(_VERBS)}"
        parts = [head] + [self._tail() for _ in range(rng.choice([1, 1, 2, 2, 3, 4]))]
        end = "?" if head.split()[0] in _WH else "."
        return " ".join(parts) + end

    def _noun(self) -> str:
        # Half common nouns, half the long tail (lower-case pseudo-words used as terms).
        return self.rng.choice(_NOUNS) if self.rng.random() < 0.5 else self._name().lower()

    def _topic(self) -> str:
        rng = self.rng
        noun = self._noun
        r = rng.random()
        if r < 0.20:
            return noun()
        if r < 0.40:
            return f"{rng.choice(_ADJ)} {noun()}"
        if r < 0.52:
            return f"the {noun()} of {self._name()}"
        if r < 0.62:
            return f"{noun()} and {noun()}"
        if r < 0.72:
            return self._name()
        if r < 0.84:
            return f"the {rng.choice(_ADJ)} {noun()} in {self._name()}"
        if r < 0.92:
            return f"how {noun()} affects {rng.choice(_ADJ)} {noun()}"
        return f"{noun()} {noun()} for {rng.choice(_ADJ)} {noun()}"

    def _sentence(self) -> str:
        rng = self.rng
        subj = rng.choice([f"The {rng.choice(_ADJ)} {rng.choice(_NOUNS)}", self._name(), f"My {rng.choice(_NOUNS)}"])
        tail = f"{rng.choice(_PREPS)} the {rng.choice(_NOUNS)}"
        if rng.random() < 0.4:
            tail += f" {rng.choice(_PREPS)} {self._name()}"
        return f"{subj} {rng.choice(_VERBS_PAST)} {tail}."

    def _fill(self, slot: str) -> str:
        rng = self.rng
        base = slot.rstrip("0123456789")
        if base == "create":
            return rng.choice(_CREATE)
        if base == "form":
            return rng.choice(_FORMS)
        if base == "topic":
            return self._topic()
        if base == "adj":
            return rng.choice(_ADJ)
        if base == "noun":
            return self._noun()
        if base == "n":
            return rng.choice(["3", "5", "10", "three", "five", "ten", "two", "seven", str(rng.randint(2, 20))])
        if base == "num":
            return str(rng.randint(0, 999))
        if base == "audience":
            return rng.choice(_AUDIENCE)
        if base == "tone":
            return rng.choice(_TONES)
        if base == "lang":
            return rng.choice(_LANGS)
        if base == "items":
            return rng.choice(_ITEMS)
        if base == "letter":
            return rng.choice("ABCDEFGHIJKLMNOPRSTW")
        if base == "name":
            return self._name()
        if base == "cat":
            return rng.choice(_CATEGORIES)
        if base == "sentence":
            return self._sentence()
        if base == "list_task":
            return rng.choice(_LIST_TASKS)
        if base == "plang":
            return rng.choice(_PLANGS)
        if base == "code_task":
            return rng.choice(_CODE_TASKS)
        if base == "action":
            return rng.choice(_ACTIONS)
        if base == "action_ing":
            return rng.choice(_ACTIONS_ING)
        if base == "role":
            return rng.choice(_ROLES)
        if base == "people":
            return rng.choice(_PEOPLE)
        if base == "unit":
            return rng.choice(_UNITS)
        if base == "math":
            return rng.choice(_MATH)
        raise KeyError(slot)

    # -------------------------------------------------------------- instructions

    def fresh(self) -> str:
        """A new instruction from a random template."""
        rng = self.rng
        fill = lambda m: self._fill(m.group(1))  # noqa: E731
        if rng.random() < self.template_rate:
            text = _SLOT_RE.sub(fill, rng.choice(_TEMPLATES))
        else:
            text = self._free()
        r = rng.random()
        if r < 0.6:
            text += " " + _SLOT_RE.sub(fill, rng.choice(_CLAUSES))
            if r < 0.2:
                text += " " + _SLOT_RE.sub(fill, rng.choice(_CLAUSES))
        if rng.random() < self.long_rate:
            n = rng.choice([8, 12, 20, 30, 45])
            text += " Use the following text as context: " + " ".join(self._sentence() for _ in range(n))
        return text

    def perturb(self, text: str, edits: int | None = None) -> str:
        """A near-duplicate of ``text``: 1-3 word-level edits (or ``edits``)."""
        rng = self.rng
        words = text.split()
        for _ in range(edits if edits is not None else rng.choice([1, 1, 2, 2, 3])):
            op = rng.random()
            if op < 0.25 and words:  # replace a word
                words[rng.randrange(len(words))] = rng.choice(self._vocab_words)
            elif op < 0.45:  # insert a word
                words.insert(rng.randint(0, len(words)), rng.choice(_FILLERS + _ADJ))
            elif op < 0.60 and len(words) > 2:  # delete a word
                del words[rng.randrange(len(words))]
            elif op < 0.75 and len(words) > 1:  # swap two adjacent words
                i = rng.randrange(len(words) - 1)
                words[i], words[i + 1] = words[i + 1], words[i]
            elif op < 0.85 and len(words) > 3:  # move a chunk (reorder clauses)
                i = rng.randrange(1, len(words) - 1)
                words = words[i:] + words[:i]
            else:  # case / punctuation only: same tokens
                i = rng.randrange(len(words)) if words else 0
                if words:
                    words[i] = rng.choice([words[i].upper(), words[i].lower(), words[i] + ",", words[i] + "!"])
        return " ".join(words)

    def corpus(self, n: int, near_duplicate_rate: float = 0.1) -> list[str]:
        """``n`` instructions; each is, with ``near_duplicate_rate``, a perturbed copy of an
        earlier one instead of a fresh one."""
        out: list[str] = []
        rng = self.rng
        for _ in range(n):
            if out and rng.random() < near_duplicate_rate:
                out.append(self.perturb(rng.choice(out)))
            else:
                out.append(self.fresh())
        return out

    def candidates(self, pool: list[str], n: int, near_duplicate_rate: float = 0.1) -> list[str]:
        """``n`` candidate instructions: fresh ones, plus near-duplicates of pool items
        with ``near_duplicate_rate``."""
        rng = self.rng
        return [self.perturb(rng.choice(pool)) if pool and rng.random() < near_duplicate_rate else self.fresh()
                for _ in range(n)]
