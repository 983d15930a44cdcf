"""(filled by its owner)"""

default_handlers: list = []
