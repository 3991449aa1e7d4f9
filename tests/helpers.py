"""Objects several test files share (import as ``from helpers import ...``: pytest puts
``tests/`` on ``sys.path``)."""


class WritesMarker:
    """Unpickling this object would create the file ``path``: what a hostile checkpoint or
    label pickle could do. The loaders must refuse it before anything is written."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))
