# Warnings and optimisation flags shared by every otfgp target.
function(otfgp_set_warnings target)
  if(CMAKE_CXX_COMPILER_ID MATCHES "GNU|Clang")
    target_compile_options(${target} PRIVATE -Wall -Wextra -Wno-unused-parameter
      $<$<CONFIG:Release>:-O3> -fno-math-errno -march=native)
  endif()
endfunction()
