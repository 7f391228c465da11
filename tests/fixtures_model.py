"""Model fixtures (owned by the workstation pipeline): tiny data set, one-epoch model, bundle."""
