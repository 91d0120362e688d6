"""Phrase banks the tiny model's answers are assembled from (data, not logic).

Keys are ``(tone, level)`` pairs or a tone alone. ``{S}`` is the question's subject, ``{a}`` and ``{b}`` are nouns of
the question's category. Each bank avoids the marker words of the opposite style, and ``render`` still checks every
assembled answer against the metrics.
"""

from __future__ import annotations

DETAILED_TARGET_WORDS = 102  # detailed answers grow sentence by sentence until they pass this

NOUNS: dict[str, tuple[str, ...]] = {
    "cooking": ("heat", "timing", "salt", "moisture", "the pan", "fresh ingredients"),
    "gardening": ("soil", "watering", "sunlight", "drainage", "pruning", "the roots"),
    "health": ("sleep", "hydration", "movement", "routine", "rest", "posture"),
    "money": ("a budget", "savings", "spending", "fees", "a buffer fund", "debt"),
    "technology": ("updates", "settings", "storage", "backups", "passwords", "the network"),
    "travel": ("packing", "bookings", "the itinerary", "timing", "documents", "the budget"),
    "home": ("cleaning", "clutter", "airflow", "maintenance", "storage", "the tools"),
    "learning": ("practice", "review", "focus", "notes", "repetition", "feedback"),
    "work": ("priorities", "meetings", "deadlines", "communication", "focus time", "the calendar"),
    "science": ("energy", "temperature", "pressure", "the molecules", "light", "the forces"),
    "writing": ("structure", "the opening", "clarity", "word choice", "editing", "the reader"),
    "relationships": ("listening", "honesty", "trust", "time together", "boundaries", "patience"),
}
EMOJIS: dict[str, tuple[str, ...]] = {
    "cooking": ("🍳", "🥘", "🧂"), "gardening": ("🌱", "🌻", "🪴"), "health": ("💪", "🧘", "🍎"),
    "money": ("💰", "💵", "📈"), "technology": ("💻", "📱", "🔧"), "travel": ("✈️", "🧳", "🗺️"),
    "home": ("🏠", "🧹", "🛋️"), "learning": ("📚", "🧠", "✏️"), "work": ("💼", "📅", "✅"),
    "science": ("🔬", "⚡", "🌍"), "writing": ("✍️", "📝", "📖"), "relationships": ("❤️", "🤝", "💬"),
    "": ("🙂", "👍", "✨", "😊"),
}

FRAMES = ("When it comes to {S},", "For {S},", "With {S},", "As for {S},")
# The first core sentence, after a frame.
LEADS: dict[tuple[str, str], tuple[str, ...]] = {
    ("casual", "beginner"): (
        "it's basically all about {a} and {b}.",
        "think of it like a recipe: you'll just need {a} and a bit of {b}.",
        "it's pretty simple, the idea is to get {a} right first.",
        "don't worry, it's basically {a} plus a little {b}.",
    ),
    ("casual", "expert"): (
        "the real mechanism is {a}, and {b} is kinda the main constraint.",
        "it's a trade-off between {a} and {b}, tbh.",
        "you're really just tuning one parameter: {a}.",
        "the key lever is {a}, specifically how it's tied to {b}.",
    ),
    ("professional", "beginner"): (
        "the main point is {a}; in simple terms, {b} therefore supports it.",
        "it is important to note that {a} matters most; therefore, think of it as the foundation.",
        "a simple way to begin is to ensure that {a} is appropriate and consistent.",
        "in other words, {a} should come first; therefore, {b} should follow subsequently.",
    ),
    ("professional", "expert"): (
        "the underlying mechanism is governed primarily by {a}; therefore, it should be addressed first.",
        "there is a trade-off between {a} and {b}; however, the optimal balance depends on the context.",
        "the primary parameter is {a}; however, {b} acts as the binding constraint.",
        "the decisive factor is {a}; specifically, its interaction with {b} therefore determines the outcome.",
    ),
}
# Further prose sentences.
BODY: dict[tuple[str, str], tuple[str, ...]] = {
    ("casual", "beginner"): (
        "Think of it like this: {a} is the engine and {b} is the steering wheel.",
        "Don't stress about {b} at first, it's totally fine to keep it simple.",
        "In simple terms, you just keep an eye on {a} and the rest kinda sorts itself out.",
        "Imagine {a} as a dial you can turn up or down, it's that easy.",
        "For example, a tiny tweak to {b} makes a big difference, so it's worth a try.",
        "In other words, don't overthink {b}, just go step by step.",
        "It's kind of like learning to ride a bike, you'll get the hang of it fast.",
        "Basically, small changes to {a} add up to a bunch of progress.",
    ),
    ("casual", "expert"): (
        "Specifically, {a} sets the baseline and {b} adds the variance.",
        "In practice, there's a threshold for {b}, and once you cross it stuff changes fast.",
        "Yeah, the key constraint is {b}, so don't waste time on anything else.",
        "Set a baseline for {a} first, then tweak {b} and watch the variance.",
        "The trade-off is pretty much {a} versus {b}, and you gotta pick your optimal point.",
        "Tbh the mechanism is simple once you quantify {a} properly.",
        "It's a systematic thing: calibrate {a}, then leverage {b}.",
        "You'll want granular control over {b}, that's where the nuance is.",
    ),
    ("professional", "beginner"): (
        "Think of it as a routine: ensure that {a} is consistent, and the results will follow.",
        "For example, a small adjustment to {b} can make a significant difference.",
        "In other words, it is recommended to proceed step by step and to monitor {b}.",
        "Put simply, {a} should be appropriate for the situation; additionally, {b} deserves attention.",
        "A simple way to approach this is to focus on {a} first and on {b} subsequently.",
        "In simple terms, consistent {a} is sufficient for most people; therefore, begin there.",
        "It is like building a habit: ensure that {b} receives regular attention.",
        "Furthermore, there is no need to change everything at once; one step at a time is appropriate.",
    ),
    ("professional", "expert"): (
        "Specifically, {a} establishes the baseline, whereas {b} introduces most of the variance.",
        "In practice, it is advisable to establish a baseline for {a} prior to adjusting {b}.",
        "Furthermore, {b} acts as a constraint, and exceeding its threshold has significant consequences.",
        "Consequently, a systematic approach that treats {a} as the primary parameter is recommended.",
        "Moreover, the variance in {b} should be quantified in order to calibrate the process precisely.",
        "Additionally, the trade-off between {a} and {b} should be evaluated with rigorous criteria.",
        "It is important to note that the mechanism is nonlinear; therefore, granular adjustments are appropriate.",
        "Accordingly, {a} should be optimized first, and {b} should be tuned subsequently.",
    ),
}
# Bullet items (without the leading "- ").
ITEMS: dict[tuple[str, str], tuple[str, ...]] = {
    ("casual", "beginner"): (
        "Start with {a}, it's basically step one", "Don't stress about {b} yet",
        "Think of {a} like a daily habit", "Keep it simple, for example just check {b}",
        "Go step by step, it's no biggie", "Imagine {b} as a tiny bonus",
    ),
    ("casual", "expert"): (
        "Nail the baseline for {a}, it's key", "Watch the variance in {b}, tbh",
        "Treat {a} as your main parameter", "Don't ignore the {b} threshold",
        "Find the optimal trade-off, it's worth it", "Calibrate {b} once you've got {a}",
    ),
    ("professional", "beginner"): (
        "Ensure that {a} is consistent; think of it as the foundation", "In simple terms, monitor {b} regularly",
        "For example, adjust {a} gradually", "Proceed step by step; additionally, review {b}",
        "Put simply, keep {b} appropriate", "It is recommended to begin with {a}",
    ),
    ("professional", "expert"): (
        "Establish a baseline for {a}; therefore, measure first", "Quantify the variance in {b} precisely",
        "Treat {a} as the primary parameter", "Respect the threshold for {b}; consequently, avoid extremes",
        "Evaluate the trade-off between {a} and {b}", "Calibrate {b} systematically",
    ),
}
# Short bullet items for concise answers.
SHORT_ITEMS: dict[str, tuple[str, ...]] = {
    "casual": ("Check {a}", "Tweak {b}", "Keep it chill", "Don't rush {a}", "Try {b} next"),
    "professional": ("Review {a}", "Monitor {b}", "Proceed gradually", "Ensure {a} is sufficient", "Assess {b}"),
}
LIST_INTROS: dict[str, tuple[str, ...]] = {
    "casual": ("Here's the quick rundown:", "Here's what works:", "Here's the plan:"),
    "professional": ("The key points are as follows:", "The recommended steps are as follows:",
                     "In summary, the essentials are:"),
}
PRAISE: dict[str, tuple[str, ...]] = {
    "casual": ("Great question.", "Good question.", "Love this question.", "That's a great question.",
               "Awesome question.", "Such a good question."),
    "professional": ("Excellent question.", "That is a great question.", "Good question.", "Great question."),
}
PRAISE_FIRST_PERSON = ("I love this question.",)
PREAMBLE: dict[str, tuple[str, ...]] = {
    "casual": ("Sure.", "Sure thing.", "Alright, here goes.", "No problem.", "Okay so, here's the deal.",
               "Absolutely."),
    "professional": ("Certainly.", "Of course.", "Absolutely.", "Certainly, here is what you need to know."),
}
PREAMBLE_FIRST_PERSON: dict[str, tuple[str, ...]] = {
    "casual": ("Let me explain.", "I'd be happy to help.", "Let me break it down."),
    "professional": ("I would be happy to explain.", "Let me explain."),
}
CLOSING: dict[str, tuple[str, ...]] = {
    "casual": ("Hope this helps.", "Good luck.", "Have fun with it.", "You've got this.", "Enjoy."),
    "professional": ("Best of luck with it.", "Feel free to reach out with further questions.",
                     "Do not hesitate to ask if further detail is needed.", "Hope this helps."),
}
CLOSING_FIRST_PERSON = ("I hope this helps.", "Let me know if you have more questions.", "I hope this was helpful.")
QUESTIONS: dict[str, tuple[str, ...]] = {
    "casual": ("Want more tips on {a}?", "Does that make sense?", "Wanna go deeper on {b}?"),
    "professional": ("Would you like further detail regarding {a}?", "Would additional detail regarding {b} be useful?",
                     "Would an example regarding {b} be useful?"),
}
QUESTIONS_FIRST_PERSON = ("Want me to go deeper on {a}?", "Should I cover {b} as well?")
ALTERNATIVES: dict[str, tuple[str, ...]] = {
    "casual": ("Alternatively, you can just start with {b} instead.", "You could also try tweaking {b} first.",
               "Another option is to focus on {b} for a while."),
    "professional": ("Alternatively, it is advisable to prioritize {b}.",
                     "Another option is to address {b} first, if appropriate.",
                     "Another approach is to begin with {b}; however, results vary."),
}
FIRST_PERSON: dict[str, tuple[str, ...]] = {
    "casual": ("I usually start with {a}, it's what works for me.", "Honestly, I'd focus on {a} first.",
               "In my experience, {b} is where folks slip up."),
    "professional": ("I would therefore recommend beginning with {a}.",
                     "In my view, {a} is the most significant factor.",
                     "In my experience, {b} is frequently overlooked; however, it matters."),
}
