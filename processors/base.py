"""What a processor plugin builds on, re-exported from :mod:`bhive.plugins.processor`.

A processor for a new ntuple flavour subclasses :class:`JetProcessor` and writes
:meth:`JetProcessor.jet_table` (one record per jet for a chunk of events); ``processor:`` in
the config chooses it.
"""

from bhive.plugins.processor import GROUP_ARRAYS, PROCESSORS, JetProcessor, ProcessorError, processor_class  # noqa: F401
