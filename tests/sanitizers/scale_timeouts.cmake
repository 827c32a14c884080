# Read by ctest (not cmake) before the test directory's other include files when NT_TEST_TIMEOUT_SCALE
# is not 1 (top-level CMakeLists.txt): multiplies every TIMEOUT that set_tests_properties sets (as
# gtest_discover_tests' generated files do) by NT_TEST_TIMEOUT_SCALE. Tests without a TIMEOUT property
# get ctest's --timeout (scripts/sanitize.sh scales that too).
if(NOT COMMAND _nt_timeouts_scaled)
  function(_nt_timeouts_scaled)
  endfunction()
  function(set_tests_properties)
    # Arguments one by one (an argument may hold a ';'), each re-quoted as a bracket argument.
    set(code "_set_tests_properties(")
    set(scale_next FALSE)
    math(EXPR last "${ARGC} - 1")
    foreach(i RANGE 0 ${last})
      set(a "${ARGV${i}}")
      if(scale_next AND a MATCHES "^[0-9]+$")
        math(EXPR a "${a} * ${NT_TEST_TIMEOUT_SCALE}")
      endif()
      set(scale_next FALSE)
      if(a STREQUAL "TIMEOUT")
        set(scale_next TRUE)
      endif()
      string(APPEND code " [==[${a}]==]")
    endforeach()
    string(APPEND code ")")
    cmake_language(EVAL CODE "${code}")
  endfunction()
endif()
