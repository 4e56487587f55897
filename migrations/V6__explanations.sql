-- Explanations: the exact TreeSHAP contributions and the adverse-action reasons of every
-- explained decision (by default every declined application; `cra serve --explain`), so that a
-- notice can be rebuilt from the log alone, with the model version, years later.
--
-- explanation: {"base_margin": m, "contributions": {"<feature>": c, ...},
--               "reasons": [{"code", "description", "features", "contribution", "fifth_factor"}]}
--              NULL when the decision was not explained. Applied by refinery; safe to re-run.

ALTER TABLE decisions ADD COLUMN IF NOT EXISTS explanation jsonb;
