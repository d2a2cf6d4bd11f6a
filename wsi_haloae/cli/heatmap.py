"""Commands of this module are added as their issues land."""

COMMANDS: list = []
