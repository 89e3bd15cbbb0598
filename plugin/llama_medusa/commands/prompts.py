"""Prompts: the generic training prompts `llama-medusa train` answers with the backbone, and the hand-written
validation prompts its stored accuracies are measured on. All written for this project (no dataset download);
`generic_prompts` can add prompts on words from the model's own vocabulary."""
from __future__ import annotations

import json
from typing import List, Optional

import numpy as np

# Generic chat / explanation / code prompts (written for this project) used to collect training states.
TRAIN_PROMPTS = [
    "What is photosynthesis?", "Explain how vaccines work.", "Write a haiku about autumn.",
    "How do I make a cup of tea?", "What causes earthquakes?", "Describe the water cycle.",
    "Write a Python function to reverse a list.", "Explain recursion with an example.",
    "What is the capital of Japan and what is it known for?", "Give me tips for a job interview.",
    "Write a short story about a dragon who is afraid of fire.", "How does a computer store data?",
    "What are the benefits of regular exercise?", "Explain the difference between weather and climate.",
    "Write a SQL query that counts orders per customer.", "What is machine learning?",
    "How do airplanes stay in the air?", "Write a poem about the sea.", "What is the theory of evolution?",
    "Explain what an API is to a beginner.", "Write a Python class for a bank account.",
    "How can I improve my sleep?", "What is the difference between a virus and a bacterium?",
    "Describe a typical day of a medieval farmer.", "Write a bash command to find large files.",
    "Why do leaves change color in the fall?", "Explain how the internet works.",
    "Give me a recipe for pancakes.", "What is a black hole?", "Write a function in C that sums an array.",
    "How do I learn a new language quickly?", "What is democracy?", "Explain the Pythagorean theorem.",
    "Write a letter thanking a teacher.", "What are prime numbers?", "How does a car engine work?",
    "Summarize the plot of Romeo and Juliet.", "Write a Python script that reads a CSV file.",
    "What is inflation?", "Explain how batteries work.", "What should I pack for a camping trip?",
    "Write a regular expression that matches an email address.", "How do plants grow from seeds?",
    "What is the role of the heart in the body?", "Explain object-oriented programming.",
    "Write a motivational message for a student.", "What are the planets of the solar system?",
    "How do I write a good essay?", "Explain what DNA is.", "Write a JavaScript function to debounce calls.",
]


TOPICS = [
    "the moon", "volcanoes", "bees", "the stock market", "climate change", "the Roman Empire", "coffee",
    "electric cars", "chess", "the human brain", "rainbows", "pizza", "the ocean", "friendship", "robots",
    "gardening", "the French Revolution", "solar panels", "dinosaurs", "music theory", "sleep", "bicycles",
    "the immune system", "social media", "mountains", "cryptography", "bread baking", "time management",
    "photography", "the Olympic Games", "rivers", "memory", "airports", "libraries", "spiders", "recycling",
    "quantum computers", "wolves", "volunteering", "deserts",
    "tea", "glaciers", "the printing press", "honeybees in winter", "video games", "marathon running", "tides",
    "the Renaissance", "electricity", "origami", "vaccines", "trains", "jazz", "the rainforest", "budgeting",
    "public speaking", "penguins", "the Silk Road", "3D printing", "meditation", "hurricanes", "cheese making",
    "the periodic table", "space telescopes", "board games", "urban planning", "octopuses", "wind turbines",
    "ancient Egypt", "podcasts", "the water supply of a city", "birdwatching", "antibiotics", "skyscrapers",
    "the history of money", "camping", "chocolate", "sign language", "lighthouses", "the Great Wall of China",
    "compost", "typography", "earthquakes", "bridges", "fermentation", "the Moon landing", "coral reefs",
    "self-driving cars", "yoga", "the Vikings", "remote work", "black holes", "knitting", "the postal service",
    "mushrooms", "weather forecasting",
]
TEMPLATES = [
    "Explain {t} to a ten-year-old.", "Write a short poem about {t}.", "Give me five interesting facts about {t}.",
    "What are the pros and cons of {t}?", "Write a short story involving {t}.", "Summarize the history of {t}.",
    "How would you teach a class about {t}?", "Write a blog post introduction about {t}.",
    "What are common misconceptions about {t}?", "Write a short dialogue between two friends about {t}.",
    "Describe {t} in three paragraphs.", "What questions would a beginner ask about {t}? Answer them.",
]
CODE_PROMPTS = [
    "Write a Python function that {t}.", "Write a JavaScript function that {t}.", "Explain how to {t} in Python.",
    "Write a unit test for a function that {t}.", "Write a C function that {t}.",
]
CODE_TASKS = [
    "sorts a list of dictionaries by a key", "counts word frequencies in a text", "checks if a number is prime",
    "merges two sorted lists", "parses a date string", "computes the average of a list", "flattens a nested list",
    "validates a password", "converts Celsius to Fahrenheit", "finds the longest word in a sentence",
    "reads a JSON file", "removes vowels from a string",
    "computes a factorial", "counts the vowels in a string", "checks whether a string is a palindrome",
    "converts a number to binary", "capitalizes every word in a sentence", "finds the maximum of a list",
    "counts the lines in a file", "reverses the words in a sentence", "computes the median of a list",
    "rotates a list by k places", "finds the intersection of two lists", "removes whitespace from a string",
    "sums the digits of a number", "checks if two strings are anagrams", "returns the n largest items of a list",
    "converts a list of pairs to a dictionary", "validates an IPv4 address", "splits a list into chunks",
]

# Natural user requests (written for this project): the shapes users type — "How do I ...",
# "What is the difference between ...", "Give me N tips for ...", a form about a subject, a function in some
# language — over subjects far from the topic list above. The hand-written validation and bench prompts share
# none of these subjects (checked by a test). Each is asked plain and with one of STYLE_SUFFIXES, which changes
# the answer's shape (a list, an example, a short reply) without a new template.
HOW_DO_I = [
    "change a flat tire", "set up a Python virtual environment", "write a cover letter", "remove a coffee stain",
    "start a vegetable garden", "train for a 5k run", "back up my photos", "learn to touch type",
    "negotiate a salary", "reverse a string in Python", "read a file line by line in Python",
    "undo the last git commit", "merge two branches in git", "install a package with pip", "make my code faster",
    "deal with stress at work", "cook rice on the stove", "boil an egg", "fix a leaky faucet",
    "make friends in a new city", "plan a road trip", "write a good resume", "take better photos with my phone",
    "prepare for an exam", "keep houseplants alive", "speed up an old laptop", "create a strong password",
    "sort a dictionary by value in Python", "handle exceptions in Python", "make an HTTP request in JavaScript",
    "connect to a SQLite database in Python", "convert a string to an integer in Java", "find a file on Linux",
    "check disk space on Linux", "schedule a job with cron", "parse JSON in JavaScript", "format a date in Python",
    "write a README for my project", "stay focused while studying", "wake up earlier", "make a monthly budget",
    "teach a child to ride a bike", "brew coffee with a French press", "bake sourdough bread",
    "store fresh herbs", "paint a room", "choose a laptop", "give constructive feedback", "run a good meeting",
    "write a thank-you email", "apologize to a friend", "memorize a speech", "start journaling",
    "meditate as a beginner", "copy a list in Python", "count lines of code in a project",
    "make a simple web page with HTML", "add a column in a spreadsheet", "write a loop in Bash",
    "use a dictionary in Python", "compare two files on Linux", "set a timer in JavaScript",
]
DIFFERENCES = [
    ("a compiler", "an interpreter"), ("RAM", "storage"), ("HTTP", "HTTPS"), ("a stack", "a queue"),
    ("an array", "a linked list"), ("TCP", "UDP"), ("SQL", "NoSQL databases"), ("a process", "a thread"),
    ("git merge", "git rebase"), ("alligators", "crocodiles"), ("a latte", "a cappuccino"),
    ("baking soda", "baking powder"), ("a simile", "a metaphor"), ("affect", "effect"), ("a comet", "an asteroid"),
    ("mitosis", "meiosis"), ("stocks", "bonds"), ("a credit card", "a debit card"), ("renting", "buying a home"),
    ("machine learning", "deep learning"), ("Java", "JavaScript"), ("a class", "an object"),
    ("a function", "a method"), ("a router", "a modem"), ("speed", "velocity"), ("mass", "weight"),
    ("an atom", "a molecule"), ("a hurricane", "a tornado"), ("a frog", "a toad"), ("a fruit", "a vegetable"),
    ("unit tests", "integration tests"), ("an abstract class", "an interface"), ("AC", "DC current"),
    ("empathy", "sympathy"), ("a lake", "a pond"), ("let", "var in JavaScript"), ("a library", "a framework"),
    ("a bug", "a feature request"), ("a sprint", "a marathon"), ("a sonnet", "a limerick"),
]
TIP_GOALS = [
    "staying productive at home", "writing readable code", "sleeping better", "learning to cook",
    "reducing screen time", "traveling on a small budget", "studying for exams", "running a first marathon",
    "improving my English", "writing clear emails", "managing a small team", "taking care of a puppy",
    "growing tomatoes", "debugging code", "staying motivated", "eating healthier", "organizing my closet",
    "reading more books", "being a better listener", "hosting a dinner party", "using git", "writing SQL queries",
    "keeping my laptop secure", "reviewing code", "taking notes in class", "moving to a new city",
    "starting a podcast", "drawing faces", "cycling in the city", "writing a novel", "saving energy at home",
    "learning chess", "beating procrastination", "choosing a good book", "learning to swim", "keeping a diary",
]
FORMS = ["a haiku", "a limerick", "a short poem", "a four-line rhyme", "a short story", "a fable",
         "a product description", "a short speech", "a birthday message", "a riddle", "a song chorus", "a tweet"]
SUBJECTS = [
    "a lighthouse keeper", "a rainy Monday", "a lost umbrella", "the first snow", "a city at dawn",
    "a cup of coffee", "an old bicycle", "a robot learning to paint", "a garden in spring", "a sleepy cat",
    "the ocean at night", "a forgotten key", "a mountain village", "a library at midnight", "a paper boat",
    "a busy kitchen", "a fox in the snow", "a summer thunderstorm", "a retired astronaut", "an empty classroom",
    "fresh bread", "a firefly", "a broken clock", "a street musician", "a hot air balloon", "a pair of old boots",
]
LANGUAGES = ["Python", "JavaScript", "TypeScript", "C", "C++", "Java", "Go", "Rust", "Ruby", "Bash"]
MORE_CODE_TASKS = [
    "finds the second largest number in a list", "counts how many times each character appears",
    "returns the greatest common divisor of two numbers", "generates all permutations of a string",
    "checks if brackets are balanced", "converts Roman numerals to integers", "finds duplicates in a list",
    "implements a stack", "transposes a matrix", "checks if a list is sorted", "removes punctuation from a string",
    "finds the most common element in a list", "converts snake_case to camelCase", "calculates compound interest",
    "shuffles a list", "computes the dot product of two vectors", "finds the missing number in a range",
    "groups words by their first letter", "truncates a string to n characters", "counts the words in a file",
    "parses a query string", "pads a number with zeros", "computes a moving average",
    "checks if a number is a power of two", "finds all divisors of a number",
]
SQL_TASKS = [
    "lists all employees hired after 2020", "counts orders per month", "finds customers with no orders",
    "returns the average salary per department", "deletes duplicate rows from a table",
    "joins orders with customers", "finds the second highest salary", "lists products that are out of stock",
    "counts users who signed up each day", "finds the oldest employee in each department",
    "updates the price of every product by 10 percent", "creates a table for blog posts",
]
WHY = [
    "is the ocean salty", "do cats purr", "do we dream", "does ice float", "do onions make you cry",
    "do birds migrate", "does bread rise", "do we yawn", "do computers use binary", "do we need sleep",
    "does the moon change shape", "do stars twinkle", "is biodiversity important", "do prices rise over time",
    "does metal feel cold", "do our ears pop on planes", "is the Mona Lisa famous", "do we get goosebumps",
    "is unit testing important", "should I use version control", "do cakes sink in the middle",
    "do magnets attract iron", "do we have time zones", "do languages change over time", "do hiccups happen",
    "do we see lightning before we hear thunder", "does coffee keep people awake", "do zebras have stripes",
]
HOW_WORKS = [
    "GPS", "a microwave oven", "Wi-Fi", "a credit score", "public key encryption", "a search engine",
    "a neural network", "a touchscreen", "an electric motor", "a compiler", "garbage collection in Java", "DNS",
    "a blockchain", "noise-cancelling headphones", "a 3D printer", "the human eye", "a nuclear reactor",
    "a solar cell", "a thermostat", "an elevator", "a camera lens", "a load balancer", "a dishwasher",
    "a hybrid car", "a rocket engine", "a barcode scanner", "a QR code", "an index in a database", "a VPN",
    "a piano", "a pacemaker", "an espresso machine",
]
SUMMARIES = [
    "the fall of the Berlin Wall", "the plot of Hamlet", "the plot of Pride and Prejudice", "the life of Marie Curie",
    "the Industrial Revolution", "the history of the internet", "the story of the Trojan Horse",
    "the theory of relativity", "the American Civil War", "the causes of the Great Depression",
    "the plot of The Odyssey", "the life of Leonardo da Vinci", "the discovery of penicillin", "the space race",
    "the plot of Frankenstein", "the main ideas of stoicism", "the life of Nelson Mandela",
    "the Apollo 13 mission", "the invention of the telephone", "the plot of Moby Dick",
]
CONSIDER = [
    "buying a used car", "choosing a programming language", "renting an apartment", "starting a small business",
    "planting a tree", "choosing a database", "hiring a freelancer", "buying running shoes", "learning to drive",
    "designing a logo", "moving abroad", "picking a vacation spot", "building a website", "planning a wedding",
    "choosing a phone plan", "investing for the first time", "designing an API", "naming a product",
]
WHAT_IS = [
    "a mortgage", "an index fund", "compound interest", "the greenhouse effect", "a sonnet", "Big O notation",
    "a closure in JavaScript", "a Docker container", "an operating system", "gravity", "a calorie", "a recession",
    "a carbon footprint", "cloud computing", "an algorithm", "a placebo", "opportunity cost", "a hypothesis",
    "an ecosystem", "a pointer in C", "a virtual machine", "a decorator in Python", "open source software",
    "a tariff", "entropy", "supply and demand", "a generator in Python", "an enzyme", "a lunar eclipse",
]
REWRITES = [
    "Make this sentence more formal: 'hey, can u send me the file asap?'",
    "Correct the grammar: 'She don't like going to school on mondays.'",
    "Translate 'Where is the train station?' into French and Spanish.",
    "Rewrite this in simpler words: 'The committee will convene to deliberate on the proposal.'",
    "Give me a synonym for 'happy' and use it in a sentence.",
    "Turn this into a polite email: 'Your package is late again. Fix it.'",
    "Shorten this sentence: 'In my personal opinion, I think that we should probably leave now.'",
    "Write a catchy title for an article about walking every day.",
    "Explain the idiom 'break the ice'.", "What does 'carpe diem' mean?",
    "Give me an example of alliteration.", "Write a one-sentence summary of why people keep pets.",
]
STYLE_SUFFIXES = [" Keep it short.", " Use an example.", " Answer with a numbered list.",
                  " Explain it for a beginner.", " Be concise and precise.", " Add a short summary at the end."]


def natural_prompts() -> List[str]:
    """The natural user requests above, each plain and with a style suffix (seeded choice)."""
    base = [f"How do I {t}?" for t in HOW_DO_I]
    base += [f"What is the difference between {a} and {b}?" for a, b in DIFFERENCES]
    base += [f"Give me {('three', 'five', 'some')[i % 3]} tips for {g}." for i, g in enumerate(TIP_GOALS)]
    base += [f"Write {f} about {s}." for i, s in enumerate(SUBJECTS) for j, f in enumerate(FORMS) if (i + j) % 2 == 0]
    base += [f"Write a {lang} function that {t}." for i, t in enumerate(MORE_CODE_TASKS) for j, lang in
             enumerate(LANGUAGES) if (i + j) % 3 == 0]
    base += [f"Write a SQL query that {t}." for t in SQL_TASKS]
    base += [f"Why {t}?" for t in WHY]
    base += [f"How does {t} work?" for t in HOW_WORKS]
    base += [f"Summarize {t} in a few sentences." for t in SUMMARIES]
    base += [f"What should I consider when {t}?" for t in CONSIDER]
    base += [f"What is {t}?" for t in WHAT_IS]
    base += REWRITES
    rng = np.random.default_rng(0)
    styled = [p + STYLE_SUFFIXES[int(i)] for p, i in zip(base, rng.integers(0, len(STYLE_SUFFIXES), len(base)))]
    return base + styled


def generic_prompts(model_path: Optional[str] = None, vocab_words: int = 1000, natural: bool = True):
    """The built-in training prompts: hand-written ones, topic x template and code-task combinations, the natural
    user requests (`natural`); with a model, also `vocab_words` prompts on words drawn from the model's own
    vocabulary (one template each), which spread the answers over far more subjects than the hand-picked topics."""
    out = list(TRAIN_PROMPTS)
    out += [tpl.format(t=t) for t in TOPICS for tpl in TEMPLATES]
    out += [tpl.format(t=t) for t in CODE_TASKS for tpl in CODE_PROMPTS]
    if natural:
        out += natural_prompts()
    if model_path is not None and vocab_words:
        words = vocab_topics(model_path, vocab_words)
        out += [TEMPLATES[i % len(TEMPLATES)].replace("{t}", "the word '{t}'" if i % 3 == 0 else "{t}").format(t=w)
                for i, w in enumerate(words)]
    return out


def vocab_topics(model_path: str, n: int, seed: int = 0) -> List[str]:
    """n lowercase words (6-12 letters) from the model's tokenizer, in a seeded random order."""
    import llama_cpp

    llm = llama_cpp.Llama(model_path, vocab_only=True, verbose=False)
    try:
        words = set()
        for t in range(llm.n_vocab()):
            w = llm.detokenize([t]).decode("utf-8", errors="ignore")
            if w.startswith(" ") and 6 <= len(w) - 1 <= 12 and w[1:].isascii() and w[1:].isalpha() and w[1:].islower():
                words.add(w[1:])
    finally:
        llm.close()
    words = sorted(words)
    order = np.random.default_rng(seed).permutation(len(words))
    return [words[i] for i in order[:n]]


# Hand-written prompts kept out of training, unlike any template above, for the accuracies stored in the heads
# file: the held-out split of the generic list shares topics and templates with the training prompts and
# overstates how well heads guess on a user's prompts (BENCHMARKS.md: top-1 0.58 there, 0.38 on these).
# They are not the bench's prompts either.
VALIDATION_PROMPTS = [
    "How do I center a div in CSS?", "Write a haiku about a train at night.",
    "What is the difference between a list and a tuple in Python?", "Give me three tips for saving money.",
    "Explain why the sky is blue.", "Write a SQL query that finds the top 5 customers by revenue.",
    "What should I consider when adopting a dog?", "Write a Python function that checks if a year is a leap year.",
    "Summarize the causes of World War I in a few sentences.", "How does a hash table work?",
    # ten prompts made the stored accuracies noisy, so twenty more: same rules, subjects kept out of training
    "How do I make a pull request on GitHub?", "Write a limerick about a forgetful wizard.",
    "What is the difference between a mutex and a semaphore?", "Give me a packing list for a beach holiday.",
    "Explain how tides relate to the phases of the moon.", "Write a Python function that merges two dictionaries.",
    "What are good habits for a healthy heart?", "Write a JavaScript function that capitalizes the first letter of a string.",
    "Describe the life cycle of a butterfly.", "How does a bloom filter work?",
    "Write an email asking my landlord to fix the heating.", "What is the Monty Hall problem?",
    "Write a SQL query that lists departments with more than ten employees.", "Why do we need sunscreen in winter?",
    "Explain the rules of tic-tac-toe and a winning strategy.", "Write a Bash script that backs up a folder every night.",
    "What are the main ideas of the book 1984?", "How can I make my presentations more engaging?",
    "Write a C++ class that represents a 2D point.", "What causes the northern lights?",
]


# The subject of each validation / bench prompt: no training prompt may ask about it (a test checks the built-in
# lists; self_prompts.py drops the model's own requests that do).
HELD_OUT_SUBJECTS = [
    "center a div", "haiku about a train", "list and a tuple", "saving money", "sky blue", "sky is blue",
    "top 5 customers", "adopting a dog", "leap year", "World War", "hash table", "refrigerator", "Fibonacci",
    "cat and a dog", "duplicate values", "guitar", "binary search",
    "pull request", "forgetful wizard", "mutex", "beach holiday", "phases of the moon", "merges two dictionaries",
    "healthy heart", "capitalizes the first letter", "butterfly", "bloom filter", "landlord", "Monty Hall",
    "more than ten employees", "sunscreen", "tic-tac-toe", "backs up a folder", "1984", "presentations",
    "2D point", "northern lights",
]


# Keys that hold the prompt in the JSON Lines files the field writes: HumanEval and most sets ("prompt"), MT-bench
# ("turns": the first turn is the prompt), Alpaca-style ("instruction"), GSM8K-style ("question").
JSONL_KEYS = ("prompt", "turns", "instruction", "question")


def read_prompts(path: str) -> List[str]:
    """One prompt per line (blank lines skipped), a JSON list of strings, or JSON Lines: one object per line with
    a "prompt", "turns" (MT-bench; its first turn), "instruction" or "question", or one JSON string per line."""
    try:
        with open(path, "rb") as f:
            raw = f.read()
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise ValueError(f"{path}: the prompt file is not UTF-8 text") from None
    except OSError as e:
        raise ValueError(f"{path}: cannot read the prompt file ({e.strerror})") from None
    if "\x00" in text:
        raise ValueError(f"{path}: the prompt file is not text (it contains NUL bytes)")
    head = text.lstrip()
    if head.startswith("["):
        try:
            items = json.loads(text)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}: looks like JSON but does not parse ({e})") from None
        if not all(isinstance(x, str) for x in items):
            raise ValueError(f"{path}: a JSON prompt file must be a list of strings")
        prompts = [x for x in items if x.strip()]
    elif head.startswith(("{", '"')):
        prompts = _json_lines(path, text)
    else:
        prompts = [line.strip() for line in text.splitlines() if line.strip()]
    if not prompts:
        raise ValueError(f"{path}: no prompts in the file")
    return prompts


def _json_lines(path: str, text: str) -> List[str]:
    prompts = []
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}, line {n}: looks like JSON Lines but does not parse ({e})") from None
        if isinstance(item, dict):
            key = next((k for k in JSONL_KEYS if k in item), None)
            if key is None:
                raise ValueError(f"{path}, line {n}: a JSON Lines prompt needs one of the keys "
                                 f"{', '.join(JSONL_KEYS)}; this one has {', '.join(sorted(item)) or 'none'}")
            item = item[key]
            if key == "turns":
                if not isinstance(item, list) or not item:
                    raise ValueError(f"{path}, line {n}: \"turns\" must be a non-empty list of strings")
                item = item[0]
        if not isinstance(item, str):
            raise ValueError(f"{path}, line {n}: the prompt must be a string, got {type(item).__name__}")
        if item.strip():
            prompts.append(item)
    return prompts
