"""The tiny configurations, in one place: tests/conftest.py's CPU runs (TINY_RUN), tools/gpu_check.py's dry run
(TINY_TRAIN, its train step's), both at TINY_SHAPE, and tools/demo.py's larger one (DEMO). Values are environment
variables (strings) for train_gpt.py."""

TINY_SHAPE = dict(NUM_LAYERS="2", MODEL_DIM="64", NUM_HEADS="4", NUM_KV_HEADS="2", TRAIN_SEQ_LEN="64")
# the test suite's runs (40 steps, validation every 20, no wall clock cap)
TINY_RUN = dict(TINY_SHAPE, TRAIN_BATCH_TOKENS="4096", ITERATIONS="40", WARMUP_STEPS="2", WARMDOWN_ITERS="10",
                LR_WARMUP_STEPS="2",
                MUON_MOMENTUM_WARMUP_STEPS="10", VAL_LOSS_EVERY="20", TRAIN_LOG_EVERY="10", EVAL_STRIDE="16",
                MAX_WALLCLOCK_SECONDS="0", TTT_PLAN="0",  # TTT_CHUNK as given (tests/test_e2e.py runs the plan)
                TTT_BATCH_DOCS="8",  # the validation's 15 documents are 8 a rank at most; the warm-up times 2 batches
                TTT_RANK="16")  # 80 (the default: 16% of a 512 row) would exceed this width of 64
# gpu_check's dry run: a few steps on the CPU; MAX_WALLCLOCK_SECONDS stays the call's (the cap check.py checks)
TINY_TRAIN = dict(TINY_SHAPE, TRAIN_BATCH_TOKENS="4096", ITERATIONS="8", WARMUP_STEPS="1", WARMDOWN_ITERS="4",
                  LR_WARMUP_STEPS="1",
                  MUON_MOMENTUM_WARMUP_STEPS="4", VAL_LOSS_EVERY="0", TRAIN_LOG_EVERY="1", EVAL_STRIDE="32",
                  EVAL_BATCH_SEQS="32", VAL_BATCH_SIZE="65536", TTT_BATCH_DOCS="8", TTT_RANK="16")
# tools/demo.py: larger, to learn something in 90 s of CPU time
DEMO = dict(NUM_LAYERS="4", MODEL_DIM="128", NUM_HEADS="4", NUM_KV_HEADS="2", MLP_MULT="3", TRAIN_SEQ_LEN="256",
            TRAIN_BATCH_TOKENS="16384", ITERATIONS="400", WARMUP_STEPS="3", WARMDOWN_ITERS="100", VAL_LOSS_EVERY="100",
            MUON_MOMENTUM_WARMUP_STEPS="10", GPTQ_RESERVE_SECONDS="2",  # its calibration takes about 1 s here
            TRAIN_LOG_EVERY="20", EVAL_STRIDE="64", EVAL_BATCH_SEQS="16", RUN_ID="demo",
            EVAL_BUDGET_SECONDS="30")  # TTT_PLAN picks the finest chunk that fits in about 24 s
