"""A simulated acquirer: settles what the terminals sold, late, wrong or not at all on purpose.

It listens to the terminals' events on MQTT, decides per merchant when each approved sale
is paid (T1, D0, T0) and for how much, injects every kind of settlement failure posmon is
meant to catch, publishes `posmon.settlement/1` results and writes settlement CSV files and
a ground-truth file of the faults. Time runs on a `posmon.simclock.SimClock`, so a T+1 day
passes in seconds.

- `core`: the decisions, sans-IO (`AcquirerCore`, `AcquirerConfig`);
- `terms`: settlement modes, fees, business days, merchant profiles;
- `faults`: fault rates and scenarios (frozen merchants, bank outages);
- `truth`: the ground-truth records;
- `files`: settlement CSVs and the ground-truth file;
- `runner`: the MQTT loop.
"""

from simulators.acquirer.core import (
    AcquirerConfig,
    AcquirerCore,
    BankBasis,
    Step,
    TimeBasis,
)
from simulators.acquirer.faults import BankOutage, FaultRates, FrozenMerchant, Scenarios
from simulators.acquirer.terms import (
    BusinessCalendar,
    MerchantProfile,
    SettlementMode,
    SettlementTerms,
)
from simulators.acquirer.truth import FaultKind, Scenario, TruthRecord

__all__ = [
    "AcquirerConfig",
    "AcquirerCore",
    "BankBasis",
    "BankOutage",
    "BusinessCalendar",
    "FaultKind",
    "FaultRates",
    "FrozenMerchant",
    "MerchantProfile",
    "Scenario",
    "Scenarios",
    "SettlementMode",
    "SettlementTerms",
    "Step",
    "TimeBasis",
    "TruthRecord",
]
