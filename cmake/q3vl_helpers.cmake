# Declarative build helpers, after Abseil's absl_cc_library.
#
#   q3vl_cc_library(NAME q3vl_core SRCS a.cc HDRS a.h DEPS absl::status)
#   q3vl_cc_test(NAME tensor_test SRCS tensor_test.cc DEPS q3vl_core LABELS unit)
#   q3vl_cc_binary(NAME q3vl SRCS main.cc DEPS q3vl_model)

function(q3vl_cc_library)
  cmake_parse_arguments(Q "" "NAME" "SRCS;HDRS;DEPS;PRIVATE_DEPS" ${ARGN})
  add_library(${Q_NAME} STATIC ${Q_SRCS} ${Q_HDRS})
  target_include_directories(${Q_NAME} PUBLIC ${PROJECT_SOURCE_DIR})
  target_link_libraries(${Q_NAME} PUBLIC ${Q_DEPS} PRIVATE ${Q_PRIVATE_DEPS})
endfunction()

function(q3vl_cc_binary)
  cmake_parse_arguments(Q "" "NAME" "SRCS;DEPS" ${ARGN})
  add_executable(${Q_NAME} ${Q_SRCS})
  target_link_libraries(${Q_NAME} PRIVATE ${Q_DEPS})
endfunction()

# Tests are GoogleTest binaries registered with ctest; LABELS are unit, golden, multirank,
# gpu, slow. ENV sets environment variables for every test in the binary.
function(q3vl_cc_test)
  cmake_parse_arguments(Q "" "NAME;TIMEOUT" "SRCS;DEPS;LABELS;ENV" ${ARGN})
  add_executable(${Q_NAME} ${Q_SRCS})
  target_link_libraries(${Q_NAME} PRIVATE ${Q_DEPS} GTest::gtest GTest::gmock GTest::gtest_main)
  if(NOT Q_TIMEOUT)
    set(Q_TIMEOUT 600)
  endif()
  gtest_discover_tests(${Q_NAME}
    PROPERTIES LABELS "${Q_LABELS}" TIMEOUT ${Q_TIMEOUT} ENVIRONMENT "${Q_ENV}"
               SKIP_REGULAR_EXPRESSION "\\[  SKIPPED \\]"
    DISCOVERY_TIMEOUT 60)
endfunction()
