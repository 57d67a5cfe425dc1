"""The `lookup` tool's table: fictional cities, people, products and events.

Names are invented so pretraining cannot know any attribute. Attribute values
come from a fixed-seed generator, so the table is the same on every machine.
Each kind is split: the first two thirds are `train` entities, the rest are
`heldout`, and links (a person's home, a product's maker) stay within a split so
held-out names never appear in training observations either.
"""
from __future__ import annotations

import datetime
import random

CITIES = ("Varnel", "Oskaby", "Trelmont", "Quenzo", "Halvik", "Dorvas", "Pellick",
          "Zarnow", "Ebrisa", "Mornett", "Kaldor", "Vessio", "Brunhal", "Tiscaro",
          "Ulmbrook", "Feyrith", "Gandrel", "Ossmere", "Rivanta", "Yelder", "Caskin",
          "Lomarra", "Pruvia", "Sendal")
PEOPLE = ("Ilva", "Borek", "Quinna", "Tozar", "Merrin", "Yusk", "Davo", "Selka",
          "Orvo", "Kessa", "Brannic", "Tulla", "Zeph", "Huldo", "Ansa", "Rikka",
          "Velm", "Corra", "Pimlo", "Nadrel", "Essa", "Gorm", "Lirra", "Tobek")
PRODUCTS = ("Zentra", "Quillo", "Marbex", "Tovin", "Ferrolux", "Snivel", "Aldaro",
            "Pexwick", "Orbelle", "Grundo", "Velto", "Kimzu")
EVENTS = ("Lumfest", "Brakeday", "Quillmoot", "Harrowmark", "Yendral", "Sunmoot",
          "Pelgrin", "Dovecall", "Ashmark", "Tevren", "Milorn", "Froskel")

KINDS = {"city": CITIES, "person": PEOPLE, "product": PRODUCTS, "event": EVENTS}
# Numeric attributes with the unit their value is in (None: a plain count).
NUMERIC = {"city": {"population": None, "elevation": "m", "founded": None},
           "person": {"age": None, "height": "cm"},
           "product": {"price": None, "weight": "kg"}}
LINKS = {"city": {"mayor": "person"}, "person": {"home": "city"},
         "product": {"maker": "person"}, "event": {"city": "city"}}


def split_of_index(i: int, n: int) -> str:
  return "train" if i < (2 * n) // 3 else "heldout"


def names(kind: str, split: str) -> tuple[str, ...]:
  all_names = KINDS[kind]
  return tuple(x for i, x in enumerate(all_names)
               if split_of_index(i, len(all_names)) == split)


def _build() -> dict[str, dict]:
  rng = random.Random("agent-world-v1")
  table: dict[str, dict] = {}
  for kind, all_names in KINDS.items():
    for i, name in enumerate(all_names):
      split = split_of_index(i, len(all_names))
      row: dict = {"kind": kind}
      if kind == "city":
        row.update(population=rng.randrange(2000, 900000), elevation=rng.randrange(3, 2900),
                   founded=rng.randrange(1100, 1990))
      elif kind == "person":
        row.update(age=rng.randrange(18, 90), height=rng.randrange(150, 205))
      elif kind == "product":
        row.update(price=rng.randrange(5, 999), weight=rng.randrange(2, 400) / 10)
      else:
        day = datetime.date(2030, 1, 1) + datetime.timedelta(days=rng.randrange(3650))
        row.update(date=day.isoformat())
      for attr, target in LINKS[kind].items():
        row[attr] = rng.choice(names(target, split))
      table[name] = row
  return table


TABLE = _build()
SPLIT = {name: split_of_index(i, len(all_names))
         for all_names in KINDS.values() for i, name in enumerate(all_names)}
_BY_FOLDED = {name.casefold(): name for name in TABLE}


def attributes(name: str) -> list[str]:
  return [a for a in TABLE[name] if a != "kind"]


def find(entity: str) -> str | None:
  """The table's spelling of `entity` (case-insensitive), or None."""
  return _BY_FOLDED.get(entity.strip().casefold())
