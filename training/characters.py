"""Character prompts to fine-tune on: names and descriptions combined from hand-written parts.

The evaluation prompts (eval_prompts.tsv) are held out: no name here is one of theirs, and the
parts below were written separately, in the same six categories, so a model that learns from
these is measured on characters it never saw. Source: written for this project, released CC0.
Seeded: the same seed gives the same characters.
"""

import random
from dataclasses import dataclass

_SYLLABLES = ("ar", "bel", "cor", "dra", "el", "fen", "gal", "hal", "ir", "jor", "kas", "lun",
              "mor", "nal", "or", "pell", "quin", "ras", "sil", "tor", "ul", "vash", "wyn",
              "xan", "yr", "zeph", "ka", "the", "mira", "do", "ven", "ri", "sa", "na", "eth")
_SURNAMES = ("Ashdown", "Blackwater", "Coldharrow", "Duskmere", "Emberly", "Fairwind", "Greyloch",
             "Hollowmere", "Ironwood", "Kestrel", "Larkspur", "Marrow", "Nightingale",
             "Oakenshield", "Pike", "Quarrel", "Ravensworth", "Saltmarsh", "Thistledown",
             "Underhill", "Vale", "Whitlock", "Yarrow", "Brightwater", "Stormcaller", "Ninefold",
             "Sunder", "Voss")

# category -> (role phrases, hooks that fit any of those roles)
PARTS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "fantasy": (
        ("a wandering sellsword", "a royal falconer", "a hedge wizard", "an elven archivist",
         "a disgraced court mage", "a dwarven miner", "a knight errant", "a tavern bard",
         "a border ranger", "a temple healer", "a thief of the lower city", "a dragon tamer"),
        ("who owes a debt to a dead queen", "who can hear the thoughts of trees",
         "who carries a sword that hums before battle", "who once betrayed their own order",
         "who is hunted by a jealous sorcerer", "who guards a map to a drowned kingdom",
         "who lost their name in a wager with a faerie", "who was raised by wolves in the north",
         "whose shadow walks a step behind", "who swore never to draw steel again"),
    ),
    "myth": (
        ("a demigod", "a river spirit", "an oracle", "a hero of the old songs", "a storm god's "
         "herald", "a trickster", "a priestess of the moon", "a giant of the mountains",
         "a fallen sun god", "a keeper of the underworld gate"),
        ("who stole fire from the sky", "who was cursed to speak only truths",
         "who wrestled death for a night and a day", "whose tears became the first sea",
         "who was born from a lightning strike", "who guards the last golden apple",
         "who tricked the winds into a sack", "who must win back a stolen shadow",
         "who was forgotten by the gods that made them", "who weaves the fates of kings"),
    ),
    "scifi": (
        ("a salvage pilot", "a rogue android", "a colony doctor", "a starship navigator",
         "a corporate spy", "an asteroid miner", "a xenolinguist", "a cyborg mercenary",
         "a terraforming engineer", "a generation-ship archivist", "a smuggler captain"),
        ("who remembers a planet no chart shows", "whose memories were sold at auction",
         "who woke from cryosleep three centuries late", "who speaks to a dead AI",
         "who is wanted in eleven star systems", "who found a signal older than the galaxy",
         "who survived the fall of the orbital ring", "who deserted the last interstellar war",
         "who carries a clone of their own child", "who mapped the dark between the stars"),
    ),
    "creature": (
        ("a river serpent", "a mountain troll", "a clockwork owl", "a shape-shifting fox",
         "a sea wyrm", "a forest golem", "a vampire bat queen", "a swamp hag",
         "a griffin", "a phoenix", "a stone gargoyle", "a frost giant"),
        ("that guards a sunken temple", "that collects the bones of heroes",
         "that grants wishes with a cruel twist", "that has slept beneath the city for a thousand "
         "years", "that sings sailors onto the rocks", "that was once human",
         "that hoards stolen names instead of gold", "that hunts only on moonless nights",
         "that keeps a village safe for a terrible price", "that remembers the world's first day"),
    ),
    "faction": (
        ("a guild of assassins", "an order of warrior monks", "a merchant league",
         "a cult of the drowned god", "a rebel fleet", "a council of archmages",
         "a brotherhood of smugglers", "a machine collective", "a clan of sky nomads",
         "a secret society of scholars"),
        ("that rules a city from the shadows", "that was founded by a traitor king",
         "that worships a sleeping machine", "that trades in forbidden knowledge",
         "that swore to end the reign of dragons", "that hides among the common folk",
         "that broke away from a dying empire", "that guards the last library",
         "that sells peace to the highest bidder", "that waits for a prophesied heir"),
    ),
    "npc": (
        ("an innkeeper", "a blacksmith", "a ferryman", "a village herbalist", "a retired "
         "soldier", "a street urchin", "a gravedigger", "a fortune teller", "a harbor master",
         "a traveling merchant", "a lamplighter", "a baker"),
        ("who knows every secret in town", "who was once a famous adventurer",
         "who hides a fugitive in the cellar", "who can't stop telling tall tales",
         "who sells maps that are always wrong", "who lost a child to the forest",
         "who is secretly a noble in exile", "who keeps a ledger of every debt in the valley",
         "who sees ghosts at the crossroads", "who waits every night for a ship that never comes"),
    ),
}
_FACTION_FIRST = ("The", "The Order of the", "The House of")
_FACTION_WORDS = ("Ashen", "Silver", "Crimson", "Hollow", "Iron", "Veiled", "Ninth", "Drowned",
                  "Gilded", "Last", "Broken", "Starbound")
_FACTION_NOUNS = ("Hand", "Compact", "Lantern", "Circle", "Chain", "Tide", "Crown", "Choir",
                  "Concord", "Wake", "Thorn", "Covenant")


@dataclass(frozen=True)
class Character:
    name: str
    description: str
    category: str


def _person(rng: random.Random) -> str:
    first = "".join(rng.choice(_SYLLABLES) for _ in range(rng.choice((2, 2, 3)))).capitalize()
    return first if rng.random() < 0.3 else f"{first} {rng.choice(_SURNAMES)}"


def _faction(rng: random.Random) -> str:
    words = (rng.choice(_FACTION_FIRST), rng.choice(_FACTION_WORDS), rng.choice(_FACTION_NOUNS))
    return " ".join(words).replace("the ", "the ", 1)


def characters(n: int, seed: int = 0, exclude_names: set[str] | frozenset = frozenset()
               ) -> list[Character]:
    """n distinct characters, spread evenly over the categories."""
    rng, out, seen = random.Random(seed), [], set(exclude_names)
    categories = list(PARTS)
    while len(out) < n:
        category = categories[len(out) % len(categories)]
        roles, hooks = PARTS[category]
        name = _faction(rng) if category == "faction" else _person(rng)
        description = f"{rng.choice(roles)} {rng.choice(hooks)}."
        if name in seen:
            continue
        seen.add(name)
        out.append(Character(name, description[0].upper() + description[1:], category))
    return out
