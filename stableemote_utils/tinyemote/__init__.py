"""TinyEmote, the small pretrained model behind the ``tiny`` preset: install, pretrain, evaluate.

Not part of the course's lessons: the ``tiny`` preset only asks :mod:`.install` for a folder.
"""
