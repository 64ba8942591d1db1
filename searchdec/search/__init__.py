"""Search: the node tree and the algorithms that expand it, one module per algorithm."""

from searchdec.search.astar import AStar
from searchdec.search.beam import Beam
from searchdec.search.best_first import BestFirstBeam
from searchdec.search.best_of_n import BestOfN
from searchdec.search.diverse_beam import DiverseBeam
from searchdec.search.expand import SearchResult, SearchStats
from searchdec.search.first_finish import FirstFinish
from searchdec.search.mcts import MCTS
from searchdec.search.reward import Reward, StepReward
from searchdec.search.sampling import Greedy, Sample
from searchdec.search.step_beam import DVTS, StepBeam
from searchdec.search.trace import Trace
from searchdec.search.tree import Node

__all__ = [
    "DVTS",
    "MCTS",
    "AStar",
    "Beam",
    "BestFirstBeam",
    "BestOfN",
    "DiverseBeam",
    "FirstFinish",
    "Greedy",
    "Node",
    "Reward",
    "Sample",
    "SearchResult",
    "SearchStats",
    "StepBeam",
    "StepReward",
    "Trace",
]
