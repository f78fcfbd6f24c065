# `cmake --install`: the static library, the embedding API's headers and a
# pkg-config file (docs/embedding.md).
#
#   cmake --install build --prefix PREFIX
#   cc $(pkg-config --cflags attnpred) app.c $(pkg-config --static --libs attnpred)
#
# Included from CMakeLists.txt after attnpred_core and the CLI are defined.

include(GNUInstallDirs)

# The public API and every project header it includes (the test
# tests/cli_install.sh checks that the installed set is closed under
# #include). Headers keep their folders under include/attnpred/, so their own
# "common/status.h"-style includes resolve with -I<prefix>/include/attnpred.
set(AP_PUBLIC_HEADERS
  train/runtime.h    # the predictor runtime
  train/predictor.h
  capture/trace.h    # the trace reader (and writer)
  capture/model.h    # the CPU transformer
  capture/gguf.h
  capture/tokenizer.h
  kernels/qmatvec.h
  kernels/quant.h
  common/par.h
  common/status.h)
foreach(h ${AP_PUBLIC_HEADERS})
  get_filename_component(dir ${h} DIRECTORY)
  install(FILES ${h} DESTINATION ${CMAKE_INSTALL_INCLUDEDIR}/attnpred/${dir})
endforeach()

install(TARGETS attnpred_core ARCHIVE DESTINATION ${CMAKE_INSTALL_LIBDIR})
install(TARGETS attnpred RUNTIME DESTINATION ${CMAKE_INSTALL_BINDIR})

# Libs.private: what attnpred_core links, flattened to -L/-l flags. A static
# library records none of its dependencies, so an embedder's link line must
# name them all; CMake's imported targets (hdf5::hdf5, CUDA::cublas, ...) are
# walked for their files and their own interface libraries.
# Collected in global properties: the walk recurses, and a function's
# variables would need passing up at every level.
function(ap_pc_add_file path)
  get_filename_component(dir "${path}" DIRECTORY)
  get_filename_component(file "${path}" NAME)
  if(file MATCHES "^lib(.+)\\.(so|a)(\\.[0-9.]+)?$")
    list(FIND CMAKE_C_IMPLICIT_LINK_DIRECTORIES "${dir}" implicit)
    if(implicit EQUAL -1)
      set_property(GLOBAL APPEND PROPERTY AP_PC_DIRS "-L${dir}")
    endif()
    set_property(GLOBAL APPEND PROPERTY AP_PC_LIBS "-l${CMAKE_MATCH_1}")
  else()
    set_property(GLOBAL APPEND PROPERTY AP_PC_LIBS "${path}")
  endif()
endfunction()
function(ap_pc_add item)
  if(item MATCHES "^\\$<LINK_ONLY:(.+)>$")
    set(item "${CMAKE_MATCH_1}")
  endif()
  if(item MATCHES "^\\$<" OR item STREQUAL "")
    return() # other generator expressions: build-time only
  endif()
  get_property(seen GLOBAL PROPERTY AP_PC_SEEN)
  if("${item}" IN_LIST seen)
    return()
  endif()
  set_property(GLOBAL APPEND PROPERTY AP_PC_SEEN "${item}")
  if(TARGET ${item})
    get_target_property(aliased ${item} ALIASED_TARGET)
    if(aliased)
      ap_pc_add(${aliased})
      return()
    endif()
    get_target_property(type ${item} TYPE)
    if(NOT type STREQUAL "INTERFACE_LIBRARY")
      set(loc)
      foreach(prop IMPORTED_LOCATION_RELEASE IMPORTED_LOCATION_NOCONFIG IMPORTED_LOCATION)
        if(NOT loc)
          get_target_property(loc ${item} ${prop})
        endif()
      endforeach()
      if(NOT loc)
        get_target_property(configs ${item} IMPORTED_CONFIGURATIONS)
        if(configs)
          list(GET configs 0 cfg)
          get_target_property(loc ${item} IMPORTED_LOCATION_${cfg})
        endif()
      endif()
      if(loc)
        ap_pc_add_file("${loc}")
      endif()
    endif()
    get_target_property(deps ${item} INTERFACE_LINK_LIBRARIES)
    if(deps)
      foreach(d ${deps})
        ap_pc_add("${d}")
      endforeach()
    endif()
  elseif(IS_ABSOLUTE "${item}")
    ap_pc_add_file("${item}")
  elseif(item MATCHES "^-")
    set_property(GLOBAL APPEND PROPERTY AP_PC_LIBS "${item}")
  else()
    set_property(GLOBAL APPEND PROPERTY AP_PC_LIBS "-l${item}")
  endif()
endfunction()

get_target_property(AP_CORE_DEPS attnpred_core INTERFACE_LINK_LIBRARIES)
foreach(d ${AP_CORE_DEPS})
  ap_pc_add("${d}")
endforeach()
if(AP_HAVE_CUDA)
  # nvcc's host objects need the C++ runtime, which CMake adds only when it
  # links with the CUDA toolchain; an embedder links with a C compiler.
  set_property(GLOBAL APPEND PROPERTY AP_PC_LIBS -lstdc++ -ldl -lrt)
endif()
if(ATTNPRED_SANITIZE)
  # The archive's objects call the sanitizer runtimes.
  set_property(GLOBAL APPEND PROPERTY AP_PC_LIBS -fsanitize=address,undefined)
endif()
get_property(AP_PC_DIRS GLOBAL PROPERTY AP_PC_DIRS)
get_property(AP_PC_LIBS GLOBAL PROPERTY AP_PC_LIBS)
list(REMOVE_DUPLICATES AP_PC_DIRS)
list(REMOVE_DUPLICATES AP_PC_LIBS)
list(JOIN AP_PC_DIRS " " AP_PC_LIBS_PRIVATE)
list(JOIN AP_PC_LIBS " " AP_PC_LIBS_TAIL)
string(STRIP "${AP_PC_LIBS_PRIVATE} ${AP_PC_LIBS_TAIL}" AP_PC_LIBS_PRIVATE)

# prefix is found from the .pc file's own place, so `cmake --install
# --prefix` at install time (not CMAKE_INSTALL_PREFIX at configure time)
# decides where the copy lives, and a moved prefix still works.
file(RELATIVE_PATH AP_PC_TO_PREFIX "/p/${CMAKE_INSTALL_LIBDIR}/pkgconfig" "/p")
string(REGEX REPLACE "/$" "" AP_PC_TO_PREFIX "${AP_PC_TO_PREFIX}")
configure_file(cmake/attnpred.pc.in ${CMAKE_CURRENT_BINARY_DIR}/attnpred.pc @ONLY)
install(FILES ${CMAKE_CURRENT_BINARY_DIR}/attnpred.pc
  DESTINATION ${CMAKE_INSTALL_LIBDIR}/pkgconfig)
