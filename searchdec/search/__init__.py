"""Search: the node tree, the one decoding step (rows.py), the Work interface (work.py), and the
algorithms over them, one module per algorithm, each registered by its import line below."""

from searchdec.search.arithmetic import ArithmeticSampling
from searchdec.search.astar import AStar
from searchdec.search.base import Search, SearchResult, SearchStats
from searchdec.search.beam import Beam
from searchdec.search.best_first import BestFirstBeam
from searchdec.search.best_of_n import BestOfN
from searchdec.search.contrastive import Contrastive, EarlyExit
from searchdec.search.diverse_beam import DiverseBeam
from searchdec.search.drafts import PromptLookup, SelfSpeculative, SuffixDraft
from searchdec.search.first_finish import FirstFinish
from searchdec.search.lexical import LexicalBeam
from searchdec.search.lookahead import Lookahead
from searchdec.search.mbr import MBR
from searchdec.search.mcts import MCTS
from searchdec.search.priority import PrioritySampling
from searchdec.search.reward_guided import RewardGuidedSpeculative
from searchdec.search.sampling import Greedy, Sample
from searchdec.search.smc import SMC
from searchdec.search.speculative import Speculative
from searchdec.search.step_beam import DVTS, StepBeam
from searchdec.search.trace import Trace
from searchdec.search.tree import Node
from searchdec.search.treebon import TreeBoN
from searchdec.search.work import Executor, InProcessExecutor

__all__ = [
    "DVTS",
    "MBR",
    "MCTS",
    "ArithmeticSampling",
    "AStar",
    "Beam",
    "BestFirstBeam",
    "BestOfN",
    "Contrastive",
    "DiverseBeam",
    "EarlyExit",
    "Executor",
    "FirstFinish",
    "Greedy",
    "InProcessExecutor",
    "LexicalBeam",
    "Lookahead",
    "Node",
    "PrioritySampling",
    "PromptLookup",
    "RewardGuidedSpeculative",
    "Sample",
    "Search",
    "SearchResult",
    "SearchStats",
    "SelfSpeculative",
    "SMC",
    "Speculative",
    "StepBeam",
    "SuffixDraft",
    "Trace",
    "TreeBoN",
]
