"""The executors' interface and the in-process executor are declared with the Work interface they
serve (searchdec/search/work.py), below the searches; this module names them for searchdec.distributed."""

from searchdec.search.work import Executor, InProcessExecutor, OnDone

__all__ = ["Executor", "InProcessExecutor", "OnDone"]
