# The scoring core's shared C types. The numbers mirror the IntEnums in compiler.py and
# rules.Op; tests/core/test_kernel_contract.py checks that they agree.

cdef enum:
    MAX_STACK = 32
    MAX_PREDICTORS = 1024  # a model's inputs, the intercept included
    N_FACTORS = 4

cdef enum Op:
    OP_CONST = 1
    OP_PROFILE = 2
    OP_CONTEXT = 3
    OP_ACTION = 4
    OP_NOW = 5
    OP_ADD = 6
    OP_SUB = 7
    OP_MUL = 8
    OP_DIV = 9
    OP_NEG = 10
    OP_EQ = 11
    OP_NE = 12
    OP_LT = 13
    OP_LE = 14
    OP_GT = 15
    OP_GE = 16
    OP_AND = 17
    OP_OR = 18
    OP_NOT = 19
    OP_IN = 20
    OP_NOT_IN = 21
    OP_BETWEEN = 22
    OP_SINCE = 23
    OP_KNOWN = 24
    OP_COALESCE = 25
    OP_MIN = 26
    OP_MAX = 27
    OP_ABS = 28
    OP_LOG1P = 29

cdef enum Update:
    UPD_COUNT = 1
    UPD_SUM = 2
    UPD_DECAYED_COUNT = 3
    UPD_DECAYED_SUM = 4
    UPD_LAST = 5
    UPD_TIME_SINCE = 6
    UPD_MIN = 7
    UPD_MAX = 8

cdef enum View:
    VIEW_COPY = 0
    VIEW_DECAYED = 1
    VIEW_SINCE = 2

cdef enum Transform:
    TF_IDENTITY = 0
    TF_LOG1P = 1
    TF_SCALE = 2
    TF_RECENCY = 3
    TF_EQUALS = 4
    TF_STANDARDIZE = 5

cdef enum Exploration:
    EXPLORE_NONE = 0
    EXPLORE_THOMPSON = 1
    EXPLORE_UCB = 2

cdef enum Outcome:
    OUT_IMPRESSION = 1
    OUT_ACCEPT = 2
    OUT_REJECT = 3
    OUT_IGNORE = 4
    OUT_CONVERT = 5

cdef enum Teach:  # compiler.Teach: what an outcome may still teach its decision's action
    TEACH_LABEL = 1
    TEACH_VALUE = 2

cdef enum Reason:
    R_SELECTED = 0
    R_NOT_IN_CHANNEL = 1
    R_OUTSIDE_VALIDITY = 2
    R_NO_CONSENT = 3
    R_ELIGIBILITY = 4
    R_APPLICABILITY = 5
    R_SUITABILITY = 6
    R_IMPRESSION_CAP = 7
    R_REJECT_SUPPRESSION = 8
    R_ACCEPT_COOLDOWN = 9
    R_INVALID_VALUE = 10
    R_RESTRAINT = 11
    R_GROUP_LIMIT = 12
    R_TOP_K = 13
