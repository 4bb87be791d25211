"""The garment benchmark: a second synthetic CIRR-format domain, never used for tuning.

One garment per image (garments.py), a FashionIQ-like caption grammar (captions.py),
polygon rendering at 84 px (render.py), the writer (benchmark.py) and the domain the
captioners read (domain.py). Its images, objects and words share nothing with the shapes
benchmark of src/offline/synthetic/.
"""
