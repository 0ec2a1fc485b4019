"""The allowlists, kept as reviewable data in allowlists/*.txt.

Each file holds one name a line, under `# group: why these are safe` lines; other lines
starting with `#` are comments. A file is read once, at its first use.
"""

import functools
import os

_FOLDER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "allowlists")

# The end of every refusal the allowlists make.
UNSAFE_HINT = "pass --allow_unsafe_deserialization only if you trust it"


@functools.cache
def names(list_name: str) -> frozenset[str]:
  """The names in allowlists/LIST_NAME.txt; a name outside any group is an error in the list."""
  path = os.path.join(_FOLDER, f"{list_name}.txt")
  found, grouped = set(), False
  with open(path, encoding="utf-8") as f:
    for number, line in enumerate(f, 1):
      line = line.strip()
      if line.startswith("# group:"):
        grouped = True
      elif line and not line.startswith("#"):
        if not grouped or len(line.split()) != 1:
          raise ValueError(f"{path}:{number}: {line!r} is not one name in a group")
        found.add(line)
  return frozenset(found)
