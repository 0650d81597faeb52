"""Readable taxonomy names, so generated titles and interest texts make sense to a reader."""

from __future__ import annotations

TAXONOMY: dict[str, list[str]] = {
    "beauty": ["skincare", "makeup", "haircare", "fragrance", "nails", "shaving", "suncare", "spa"],
    "sports": ["running", "cycling", "football", "fitness", "yoga", "hiking", "swimming", "tennis"],
    "games": ["mobile", "console", "strategy", "puzzle", "esports", "rpg", "casual", "arcade"],
    "travel": ["flights", "hotels", "cruises", "camping", "citybreak", "beach", "ski", "roadtrip"],
    "food": ["snacks", "coffee", "baking", "vegan", "seafood", "noodles", "dessert", "grill"],
    "tech": [
        "phones",
        "laptops",
        "audio",
        "cameras",
        "wearables",
        "drones",
        "gaming-pc",
        "smarthome",
    ],
    "finance": ["loans", "insurance", "investing", "crypto", "banking", "credit", "pension", "tax"],
    "auto": ["suv", "electric", "sedan", "motorbike", "tyres", "carcare", "rental", "trucks"],
    "fashion": ["sneakers", "dresses", "denim", "watches", "bags", "jewelry", "outerwear", "kids"],
    "home": ["furniture", "kitchen", "garden", "bedding", "lighting", "decor", "cleaning", "tools"],
    "education": [
        "languages",
        "coding",
        "exams",
        "music",
        "kids-learning",
        "mba",
        "design",
        "math",
    ],
    "health": ["vitamins", "pharmacy", "dental", "eyecare", "sleep", "diet", "mental", "clinics"],
}

CATEGORY_NAMES: list[str] = list(TAXONOMY)

ADJECTIVES = [
    "new",
    "best",
    "top",
    "smart",
    "classic",
    "pro",
    "mini",
    "ultra",
    "daily",
    "premium",
    "easy",
    "fresh",
    "quick",
    "essential",
    "bold",
    "light",
    "pure",
    "super",
    "urban",
    "wild",
]

SYLLABLES = ["ka", "lo", "mi", "ra", "ze", "vo", "ni", "ta", "su", "pe", "xo", "la", "do", "fi"]


def subtopic_name(category: int, subtopic: int) -> str:
    return TAXONOMY[CATEGORY_NAMES[category]][subtopic]


def brand_name(advertiser: int) -> str:
    """A deterministic made-up brand name for an advertiser id."""
    a = SYLLABLES[advertiser % len(SYLLABLES)]
    b = SYLLABLES[(advertiser // len(SYLLABLES)) % len(SYLLABLES)]
    c = SYLLABLES[(advertiser // len(SYLLABLES) ** 2) % len(SYLLABLES)]
    return (a + b + c).capitalize()
