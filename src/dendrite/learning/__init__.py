"""Learning from the execution history: routing tasks to model tiers and pools."""

from dendrite.learning.calibration import RouteAccuracy, accuracy_of, routing_accuracy
from dendrite.learning.router import (
    DecisionExpiredError,
    FeatureVector,
    Featuriser,
    HashedFeaturiser,
    OptionEstimate,
    ReplayReport,
    Router,
    RouterError,
    RoutingChoice,
    TaskFeatures,
    UnknownDecisionError,
)

__all__ = [
    "DecisionExpiredError",
    "FeatureVector",
    "Featuriser",
    "HashedFeaturiser",
    "OptionEstimate",
    "ReplayReport",
    "RouteAccuracy",
    "Router",
    "RouterError",
    "RoutingChoice",
    "TaskFeatures",
    "UnknownDecisionError",
    "accuracy_of",
    "routing_accuracy",
]
