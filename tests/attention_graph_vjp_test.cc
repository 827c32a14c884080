// Filled in by the reverse-mode work of issue 7.
#include "gtest/gtest.h"
