"""The shapes benchmark as a domain (src/offline/domain.py): scenes.json, the scene grammar."""

from __future__ import annotations

from src.offline.domain import Domain
from src.offline.synthetic import changes
from src.offline.synthetic.captions import apply_caption, describe_difference
from src.offline.synthetic.scenes import SCENES_FILE, SceneObject, load_scenes


def _owns(description: object) -> bool:
    return isinstance(description, tuple) and all(isinstance(o, SceneObject) for o in description)


SHAPES_DOMAIN = Domain(
    name="shapes",
    descriptions_file=SCENES_FILE,
    max_changes_per_text=changes.MAX_STEPS,
    owns=_owns,
    load_descriptions=load_scenes,
    describe_difference=describe_difference,
    apply_caption=apply_caption,
    differences=changes.differences,
    render_changes=changes.render_changes,
    stated_changes=changes.stated_changes,
    alternatives=changes.alternatives,
    possible_changes=changes.possible_changes,
)
